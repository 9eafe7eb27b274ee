// openapi/openapi.yaml as the services' validation source: its components become Ajv and Fastify
// shared schemas, and each route takes its parameters, body and responses from its operation.
// (Not fastify-openapi-glue: it wires operationIds to one handler object, where chatrl keeps one
// route file per resource; this keeps the routes Fastify-native and the spec the only schema.)
import { readFileSync } from "node:fs";
import { Ajv, type Options as AjvOptions, type ValidateFunction } from "ajv";
import type { FastifyInstance, FastifySchema, HTTPMethods } from "fastify";
import fp from "fastify-plugin";
import { parse } from "yaml";

type JsonSchema = Record<string, unknown>;
type Parameter = {
  name: string;
  in: "path" | "query" | "header" | "cookie";
  required?: boolean;
  schema: JsonSchema;
};
type Operation = {
  operationId: string;
  security?: unknown[];
  parameters?: (Parameter | { $ref: string })[];
  requestBody?: { content: Record<string, { schema: JsonSchema }> };
  responses: Record<string, { $ref?: string; content?: Record<string, { schema: JsonSchema }> }>;
};
export type OpenApiDocument = {
  openapi: string;
  paths: Record<string, Partial<Record<Lowercase<HTTPMethods>, Operation>>>;
  components: {
    schemas: Record<string, JsonSchema>;
    parameters: Record<string, Parameter>;
    responses: Record<string, unknown>;
  };
};

export const OPENAPI_PATH = new URL("../../../openapi/openapi.yaml", import.meta.url);

export const openApiDocument: OpenApiDocument = parse(readFileSync(OPENAPI_PATH, "utf8"));

const SCHEMA_REF = "#/components/schemas/";

/** Rewrites `#/components/schemas/X` into `X#`, the id each component is registered under. */
function toSharedRefs<T>(value: T): T {
  if (Array.isArray(value)) return value.map(toSharedRefs) as T;
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([key, inner]) => [
        key,
        key === "$ref" && typeof inner === "string" && inner.startsWith(SCHEMA_REF)
          ? `${inner.slice(SCHEMA_REF.length)}#`
          : toSharedRefs(inner),
      ]),
    ) as T;
  }
  return value;
}

/** Every component schema, with `$id` set to its name and its refs pointing at other ids. */
export const openApiSchemas: JsonSchema[] = Object.entries(openApiDocument.components.schemas).map(
  ([name, schema]) => ({ $id: name, ...toSharedRefs(schema) }),
);

// Bodies are validated as sent: no type coercion and no stripping of unknown fields, so
// `"max_steps": "100"` or a misspelt key is a 400 rather than silently changed.
// Query strings, path params and headers arrive as strings and are coerced.
const common: AjvOptions = { allErrors: false, allowUnionTypes: true, strict: true };
const bodyAjv = new Ajv({
  ...common,
  coerceTypes: false,
  useDefaults: false,
  removeAdditional: false,
});
const paramsAjv = new Ajv({
  ...common,
  coerceTypes: "array",
  useDefaults: true,
  removeAdditional: false,
});
for (const schema of openApiSchemas) {
  bodyAjv.addSchema(schema);
  paramsAjv.addSchema(schema);
}

/** Fastify validator compiler: Ajv instances that already know every component schema. */
export function openApiValidatorCompiler({
  schema,
  httpPart,
}: {
  schema: JsonSchema;
  httpPart?: string;
}): ValidateFunction {
  return (httpPart === "body" ? bodyAjv : paramsAjv).compile(schema);
}

/**
 * Registers the components as Fastify shared schemas (for response serialization) and installs
 * the validator compiler. Register it on the root before any route built by openApiRoute.
 */
export const openApiPlugin = fp(
  async (app: FastifyInstance) => {
    for (const schema of openApiSchemas) app.addSchema(schema);
    app.setValidatorCompiler(openApiValidatorCompiler);
  },
  { name: "chatrl-openapi", fastify: "5.x" },
);

function resolveParameter(p: Parameter | { $ref: string }): Parameter {
  if (!("$ref" in p)) return p;
  const name = p.$ref.replace("#/components/parameters/", "");
  const resolved = openApiDocument.components.parameters[name];
  if (!resolved) throw new Error(`openapi.yaml: unknown parameter ${p.$ref}`);
  return resolved;
}

function parameterObject(params: Parameter[], lowerCaseNames = false): JsonSchema | undefined {
  if (params.length === 0) return undefined;
  const name = (p: Parameter) => (lowerCaseNames ? p.name.toLowerCase() : p.name);
  return {
    type: "object",
    properties: Object.fromEntries(params.map((p) => [name(p), toSharedRefs(p.schema)])),
    required: params.filter((p) => p.required).map(name),
    // Headers carry much more than the API's own; paths and query strings carry only ours.
    ...(lowerCaseNames ? {} : { additionalProperties: false }),
  };
}

export type OpenApiRoute = {
  method: HTTPMethods;
  url: string;
  schema: FastifySchema;
  config: { operationId: string; public: boolean };
};

/**
 * The route options for one operation of openapi.yaml: Fastify url (`{id}` -> `:id`), schemas
 * for params, query string, headers, a JSON body and JSON 2xx responses, and whether the
 * operation needs no credentials (`security: []`). Spread it into `app.route({...})`.
 */
export function openApiRoute(method: HTTPMethods, path: string): OpenApiRoute {
  const operation = openApiDocument.paths[path]?.[method.toLowerCase() as Lowercase<HTTPMethods>];
  if (!operation) throw new Error(`openapi.yaml has no operation ${method} ${path}`);
  const params = (operation.parameters ?? []).map(resolveParameter);
  const of = (where: Parameter["in"]) => params.filter((p) => p.in === where);
  const jsonBody = operation.requestBody?.content["application/json"]?.schema;
  const response: Record<string, JsonSchema> = {};
  for (const [status, answer] of Object.entries(operation.responses)) {
    const schema = answer.content?.["application/json"]?.schema;
    if (status.startsWith("2") && schema) response[status] = toSharedRefs(schema);
  }
  const schema: FastifySchema = {
    params: parameterObject(of("path")),
    querystring: parameterObject(of("query")),
    headers: parameterObject(of("header"), true),
    body: jsonBody ? toSharedRefs(jsonBody) : undefined,
    response: Object.keys(response).length > 0 ? response : undefined,
  };
  for (const key of Object.keys(schema) as (keyof FastifySchema)[]) {
    if (schema[key] === undefined) delete schema[key];
  }
  return {
    method,
    url: path.replace(/\{(\w+)\}/g, ":$1"),
    schema,
    config: {
      operationId: operation.operationId,
      public: Array.isArray(operation.security) && operation.security.length === 0,
    },
  };
}

declare module "fastify" {
  interface FastifyContextConfig {
    /** The openapi.yaml operation the route serves. */
    operationId?: string;
    /** The operation declares `security: []`: no credentials needed. */
    public?: boolean;
  }
}

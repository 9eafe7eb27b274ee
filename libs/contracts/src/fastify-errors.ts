import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import { isDatabaseUnavailable } from "./transient-errors.ts";

export type ErrorBody = {
  error: { message: string; type: string; param: string | null; code: string | null };
};

/** An error meant for the client: its message, param and code are sent as they are. */
export class ApiError extends Error {
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;

  constructor(
    readonly statusCode: number,
    message: string,
    opts: { type?: string; param?: string | null; code?: string | null } = {},
  ) {
    super(message);
    this.name = "ApiError";
    this.type = opts.type ?? defaultType(statusCode);
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
  }
}

function defaultType(status: number): string {
  if (status === 401) return "authentication_error";
  if (status === 403) return "permission_error";
  if (status === 404) return "not_found_error";
  if (status === 429) return "rate_limit_error";
  if (status === 503) return "service_unavailable";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

type AjvError = {
  keyword: string;
  instancePath: string;
  message?: string;
  params: Record<string, unknown>;
};

/** `/stages/sft/max_steps` -> `stages.sft.max_steps`, `/datasets/0/id` -> `datasets[0].id`. */
function pointerToParam(pointer: string): string {
  return pointer
    .split("/")
    .slice(1)
    .map((part) => part.replace(/~1/g, "/").replace(/~0/g, "~"))
    .reduce(
      (acc, part) => (/^\d+$/.test(part) ? `${acc}[${part}]` : acc ? `${acc}.${part}` : part),
      "",
    );
}

function join(base: string, key: string): string {
  return base ? `${base}.${key}` : key;
}

/** Turns Ajv's first error into a sentence that names the field, and the field's path. */
export function describeValidationError(
  errors: AjvError[],
  context: string | undefined,
): { message: string; param: string | null } {
  // oneOf/anyOf summaries say less than the branch errors before them.
  const error = errors.find((e) => e.keyword !== "oneOf" && e.keyword !== "anyOf") ?? errors[0];
  const where = context === "body" || !context ? "" : context;
  const path = pointerToParam(error.instancePath);
  const subject = path || where || "body";
  switch (error.keyword) {
    case "additionalProperties": {
      const field = join(path, String(error.params.additionalProperty));
      return { message: `Unknown field '${field}'${where ? ` in ${where}` : ""}`, param: field };
    }
    case "required": {
      const field = join(path, String(error.params.missingProperty));
      return {
        message: `Missing required field '${field}'${where ? ` in ${where}` : ""}`,
        param: field,
      };
    }
    case "enum":
      return {
        message: `'${subject}' must be one of: ${(error.params.allowedValues as unknown[]).join(", ")}`,
        param: path || null,
      };
    case "minProperties":
    case "maxProperties":
      return {
        message: `'${subject}' ${error.message}`,
        param: path || null,
      };
    default:
      return { message: `'${subject}' ${error.message ?? "is invalid"}`, param: path || null };
  }
}

// Fastify's own client errors, under codes a client can read without knowing Fastify.
const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: "body_too_large",
  FST_ERR_CTP_INVALID_JSON_BODY: "invalid_json",
  FST_ERR_CTP_EMPTY_JSON_BODY: "invalid_json",
  FST_ERR_CTP_INVALID_MEDIA_TYPE: "unsupported_media_type",
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: "invalid_content_length",
};

function send(reply: FastifyReply, status: number, body: ErrorBody) {
  return reply.code(status).type("application/json; charset=utf-8").send(body);
}

/**
 * Fastify's `frameworkErrors` option: errors found before routing (a path with malformed
 * percent-encoding such as `/v1/runs/%ff`, a parameter too long) in the same shape as the rest.
 * Give it to `Fastify({ frameworkErrors })`; the errors plugin cannot, it runs after routing.
 */
export function frameworkErrors(
  error: FastifyError,
  _request: FastifyRequest,
  reply: FastifyReply,
) {
  const badUrl = error.code === "FST_ERR_BAD_URL";
  return send(reply, 400, {
    error: {
      message: badUrl
        ? "The request path is not valid: it holds malformed percent-encoding"
        : error.message,
      type: "invalid_request_error",
      param: null,
      code: badUrl ? "invalid_path" : (error.code?.toLowerCase() ?? null),
    },
  });
}

/**
 * Answers every error, unknown route and validation failure as
 * `{"error":{"message","type","param","code"}}`. Stack traces never leave the process; 5xx
 * errors that are not ApiErrors are logged and answered with a generic message.
 */
export const errorsPlugin = fp(
  async (app: FastifyInstance) => {
    app.setErrorHandler((error: FastifyError | ApiError, request: FastifyRequest, reply) => {
      if (error instanceof ApiError) {
        if (error.statusCode >= 500) request.log.warn({ err: error }, error.message);
        return send(reply, error.statusCode, {
          error: { message: error.message, type: error.type, param: error.param, code: error.code },
        });
      }
      if (error.validation) {
        const { message, param } = describeValidationError(
          error.validation as AjvError[],
          error.validationContext,
        );
        return send(reply, 400, {
          error: { message, type: "invalid_request_error", param, code: "invalid_value" },
        });
      }
      if (isDatabaseUnavailable(error)) {
        // An outage, not a bug: 503 tells clients and load balancers to retry.
        request.log.error({ err: error }, "database unavailable");
        return send(reply, 503, {
          error: {
            message: "The database is unavailable; try again shortly",
            type: "service_unavailable",
            param: null,
            code: "database_unavailable",
          },
        });
      }
      const status = error.statusCode && error.statusCode >= 400 ? error.statusCode : 500;
      if (status >= 500) {
        request.log.error({ err: error }, "request failed");
        return send(reply, status, {
          error: {
            message: "Internal server error",
            type: defaultType(status),
            param: null,
            code: null,
          },
        });
      }
      // Fastify's own 4xx (body too large, bad JSON, unsupported media type) carry a safe message.
      return send(reply, status, {
        error: {
          message: error.message,
          type: defaultType(status),
          param: null,
          code: error.code ? (FASTIFY_CODES[error.code] ?? error.code.toLowerCase()) : null,
        },
      });
    });

    app.setNotFoundHandler((request, reply) =>
      send(reply, 404, {
        error: {
          message: `No route for ${request.method} ${request.url.split("?")[0]}`,
          type: "not_found_error",
          param: null,
          code: "unknown_route",
        },
      }),
    );
  },
  { name: "chatrl-errors", fastify: "5.x" },
);

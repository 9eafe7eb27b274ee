import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { openApiDocument, openApiRoute, openApiValidatorCompiler } from "../src/openapi.ts";

const root = path.resolve(import.meta.dirname, "../../..");
const COMMITTED = "libs/contracts/src/generated/openapi.ts";

describe("openapi.yaml", () => {
  it("matches the committed generated types (run `npm run generate:openapi` after editing it)", async () => {
    const pkg = JSON.parse(await readFile(path.join(root, "package.json"), "utf8"));
    const script: string = pkg.scripts["generate:openapi"];
    expect(script).toContain(`-o ${COMMITTED}`);
    const dir = await mkdtemp(path.join(tmpdir(), "chatrl-openapi-"));
    try {
      const out = path.join(dir, "openapi.ts");
      // The same command as the npm script, writing to a temporary file instead.
      const args = script.split(/\s+/).slice(1);
      args[args.indexOf(COMMITTED)] = out;
      await promisify(execFile)(path.join(root, "node_modules/.bin/openapi-typescript"), args, {
        cwd: root,
      });
      const fresh = await readFile(out, "utf8");
      const committed = await readFile(path.join(root, COMMITTED), "utf8");
      expect(fresh).toBe(committed);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("compiles every operation's schemas with strict Ajv", () => {
    let operations = 0;
    for (const [url, methods] of Object.entries(openApiDocument.paths)) {
      for (const method of Object.keys(methods)) {
        const route = openApiRoute(method.toUpperCase() as "GET", url);
        for (const part of ["params", "querystring", "headers", "body"] as const) {
          const schema = route.schema[part];
          if (schema)
            openApiValidatorCompiler({
              schema: schema as object as Record<string, unknown>,
              httpPart: part,
            });
        }
        operations++;
      }
    }
    expect(operations).toBe(23);
  });

  it("turns an operation into Fastify route options", () => {
    const route = openApiRoute("GET", "/v1/runs/{id}/metrics");
    expect(route.url).toBe("/v1/runs/:id/metrics");
    expect(route.config).toEqual({ operationId: "listRunMetrics", public: false });
    expect(openApiRoute("GET", "/healthz").config.public).toBe(true);
    expect(() => openApiRoute("DELETE", "/v1/runs")).toThrow(/no operation DELETE/);
  });

  it("validates request bodies without coercing types or dropping unknown fields", () => {
    const validate = openApiValidatorCompiler({
      schema: { $ref: "RunCreateRequest#" },
      httpPart: "body",
    });
    const body = {
      name: "r",
      model: { preset: "tiny" },
      datasets: [{ id: `ds_${"a".repeat(24)}` }],
      stages: { sft: { max_steps: "100" } },
    };
    expect(validate(body)).toBe(false);
    expect(validate.errors?.[0]).toMatchObject({ instancePath: "/stages/sft/max_steps" });
    expect(body.stages.sft.max_steps).toBe("100");
  });
});

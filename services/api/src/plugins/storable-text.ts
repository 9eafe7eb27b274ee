import { ApiError, unstorableTextReason } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

/** The first string inside `value` that Postgres cannot store, as `[param, reason]`. */
function findUnstorable(value: unknown, path: string): [string, string] | null {
  if (typeof value === "string") {
    const reason = unstorableTextReason(value);
    return reason ? [path, reason] : null;
  }
  if (Array.isArray(value)) {
    for (const [i, item] of value.entries()) {
      const found = findUnstorable(item, `${path}[${i}]`);
      if (found) return found;
    }
  } else if (value && typeof value === "object") {
    for (const [key, item] of Object.entries(value)) {
      const found = findUnstorable(item, path ? `${path}.${key}` : key);
      if (found) return found;
    }
  }
  return null;
}

/**
 * Refuses (400) ids, names and query values holding a NUL character or a lone surrogate, which
 * Postgres would refuse with an error answered as a 500. JSONL bodies are checked row by row
 * by parseJsonl instead, so a string or bytes body is left alone here.
 */
export const storableTextPlugin = fp(
  async (app: FastifyInstance) => {
    app.addHook("preHandler", async (request) => {
      for (const part of [request.params, request.query, request.body]) {
        if (typeof part === "string" || Buffer.isBuffer(part)) continue;
        const found = findUnstorable(part, "");
        if (found) {
          const [param, reason] = found;
          throw new ApiError(400, `'${param}' ${reason}`, { param, code: "invalid_value" });
        }
      }
    });
  },
  { name: "chatrl-storable-text", fastify: "5.x" },
);

// Bearer keys from CHATRL_API_KEYS, as OpenAI clients send them. With no keys configured the
// service is open (local use). Operations marked `security: []` in openapi.yaml (health checks)
// are always open.
import { createHash, timingSafeEqual } from "node:crypto";
import { ApiError } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

const digest = (key: string) => createHash("sha256").update(key).digest();

export default fp(
  async (app: FastifyInstance, opts: { apiKeys: string[] }) => {
    if (opts.apiKeys.length === 0) return;
    const accepted = opts.apiKeys.map(digest);
    app.addHook("onRequest", async (request) => {
      const config = request.routeOptions.config as { public?: boolean };
      if (config.public) return;
      const match = /^Bearer\s+(.+)$/i.exec(request.headers.authorization ?? "");
      // Comparing fixed-length digests keeps the check constant-time.
      const given = match ? digest(match[1].trim()) : null;
      if (!given || !accepted.some((key) => timingSafeEqual(key, given))) {
        throw new ApiError(
          401,
          match
            ? "Incorrect API key provided"
            : "Missing API key: send it as 'Authorization: Bearer <key>'",
          { type: "authentication_error", code: "invalid_api_key" },
        );
      }
    });
  },
  { name: "auth" },
);

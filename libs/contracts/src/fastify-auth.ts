// Bearer-key authentication shared by the api and the inference service, as OpenAI clients send
// keys. No keys configured means no authentication (a local, single-user setup). Routes whose
// openapi.yaml operation says `security: []` (health checks) are always open.
import bearerAuth from "@fastify/bearer-auth";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { ApiError } from "./fastify-errors.ts";

export const authPlugin = fp(
  async (app: FastifyInstance, opts: { apiKeys: string[] }) => {
    if (opts.apiKeys.length === 0) return;
    // The library compares keys in constant time; we only decide which routes it guards.
    await app.register(bearerAuth, {
      keys: opts.apiKeys,
      addHook: false,
      verifyErrorLogLevel: "info",
    });
    const verify = app.verifyBearerAuth!;
    app.addHook("onRequest", (request, reply, done) => {
      if (request.routeOptions.config.public) return done();
      verify(request, reply, (error) => {
        if (!error) return done();
        reply.header("www-authenticate", 'Bearer realm="chatrl"');
        done(
          new ApiError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'", {
            code: "invalid_api_key",
          }),
        );
      });
    });
  },
  { name: "chatrl-auth", fastify: "5.x" },
);

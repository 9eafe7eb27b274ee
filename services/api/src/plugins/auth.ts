import { ApiError } from "@chatrl/contracts";
import bearerAuth from "@fastify/bearer-auth";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

/**
 * Bearer-key authentication for every route except those openapi.yaml marks `security: []`
 * (health). No keys configured means no authentication (a local, single-user setup).
 */
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

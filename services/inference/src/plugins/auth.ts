// Bearer keys from CHATRL_API_KEYS, as OpenAI clients send them, checked like the api checks
// them. With no keys configured the service is open (local use). Operations marked
// `security: []` in openapi.yaml (health checks) are always open.
import { ApiError } from "@chatrl/contracts";
import bearerAuth from "@fastify/bearer-auth";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

export default fp(
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
      if ((request.routeOptions.config as { public?: boolean }).public) return done();
      verify(request, reply, (error) => {
        if (!error) return done();
        reply.header("www-authenticate", 'Bearer realm="chatrl"');
        done(
          new ApiError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'", {
            type: "authentication_error",
            code: "invalid_api_key",
          }),
        );
      });
    });
  },
  { name: "auth" },
);

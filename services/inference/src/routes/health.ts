import { checkReadiness, openApiRoute, READINESS_TIMEOUT_MS } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";

export default async function healthRoutes(app: FastifyInstance) {
  app.route({ ...openApiRoute("GET", "/healthz"), handler: async () => ({ status: "ok" }) });

  // Ready when Postgres answers: every model is loaded from it. (No Redis here.)
  app.route({
    ...openApiRoute("GET", "/readyz"),
    // Why Postgres is down (its host and port) only for callers with a key.
    handler: async (request) =>
      checkReadiness({ postgres: () => app.db.prisma.$queryRaw`SELECT 1` }, READINESS_TIMEOUT_MS, {
        detail: await app.presentsValidKey(request),
      }),
  });
}

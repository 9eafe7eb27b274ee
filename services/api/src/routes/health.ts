import { checkReadiness, openApiRoute, READINESS_TIMEOUT_MS } from "@chatrl/contracts";
import { checkRedis } from "@chatrl/queue";
import type { FastifyInstance } from "fastify";

export default async function healthRoutes(app: FastifyInstance, opts: { redisUrl: string }) {
  app.route({
    ...openApiRoute("GET", "/healthz"),
    handler: async () => ({ status: "ok" as const }),
  });

  app.route({
    ...openApiRoute("GET", "/readyz"),
    handler: () =>
      checkReadiness({
        postgres: () => app.db.prisma.$queryRaw`SELECT 1`,
        redis: () => checkRedis(opts.redisUrl, READINESS_TIMEOUT_MS),
      }),
  });
}

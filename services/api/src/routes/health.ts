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
    // Open to probes; why a dependency is down (hosts, ports) only for callers with a key.
    handler: async (request) =>
      checkReadiness(
        {
          postgres: () => app.db.prisma.$queryRaw`SELECT 1`,
          redis: () => checkRedis(opts.redisUrl, READINESS_TIMEOUT_MS),
        },
        READINESS_TIMEOUT_MS,
        { detail: await app.presentsValidKey(request) },
      ),
  });
}

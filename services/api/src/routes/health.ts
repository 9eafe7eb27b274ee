import { ApiError, openApiRoute } from "@chatrl/contracts";
import { checkRedis } from "@chatrl/queue";
import type { FastifyInstance } from "fastify";

async function checkPostgres(app: FastifyInstance): Promise<void> {
  await app.db.prisma.$queryRaw`SELECT 1`;
}

export default async function healthRoutes(app: FastifyInstance, opts: { redisUrl: string }) {
  app.route({
    ...openApiRoute("GET", "/healthz"),
    handler: async () => ({ status: "ok" as const }),
  });

  app.route({
    ...openApiRoute("GET", "/readyz"),
    handler: async () => {
      const [postgres, redis] = await Promise.allSettled([
        checkPostgres(app),
        checkRedis(opts.redisUrl, 2000),
      ]);
      const problems = [
        postgres.status === "rejected" ? `postgres: ${firstLine(postgres.reason)}` : null,
        redis.status === "rejected" ? `redis: ${firstLine(redis.reason)}` : null,
      ].filter((p) => p !== null);
      if (problems.length > 0) {
        throw new ApiError(503, `Not ready: ${problems.join("; ")}`, { code: "not_ready" });
      }
      return { status: "ready" as const, postgres: "ok", redis: "ok" };
    },
  });
}

function firstLine(reason: unknown): string {
  return String((reason as Error)?.message ?? reason).split("\n")[0];
}

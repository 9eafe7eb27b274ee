import { ApiError, openApiRoute } from "@chatrl/contracts";
import { checkRedis } from "@chatrl/queue";
import type { FastifyInstance } from "fastify";

const CHECK_TIMEOUT_MS = 2000;

async function checkPostgres(app: FastifyInstance): Promise<void> {
  // A Postgres that drops packets would leave the query hanging: a probe must answer in time.
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no answer within ${CHECK_TIMEOUT_MS} ms`)),
      CHECK_TIMEOUT_MS,
    );
  });
  try {
    await Promise.race([app.db.prisma.$queryRaw`SELECT 1`, timeout]);
  } finally {
    clearTimeout(timer);
  }
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
        checkRedis(opts.redisUrl, CHECK_TIMEOUT_MS),
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

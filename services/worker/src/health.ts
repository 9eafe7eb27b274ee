// The worker's HTTP face for orchestrators (CHATRL_WORKER_HEALTH_PORT): liveness and readiness.
// A worker needs no other HTTP; runs and progress are read through the api.
import { ApiError, errorsPlugin } from "@chatrl/contracts";
import type { Database } from "@chatrl/db";
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type IORedis from "ioredis";
import type { Logger } from "pino";
import type { RunningWorker } from "./worker.ts";

const CHECK_TIMEOUT_MS = 2000;

export type HealthDeps = {
  db: Database;
  connection: IORedis;
  worker: Pick<RunningWorker, "workers">;
  logger?: Logger;
};

export async function buildHealthApp(deps: HealthDeps): Promise<FastifyInstance> {
  const app = Fastify({ loggerInstance: deps.logger as FastifyBaseLogger | undefined });
  await app.register(errorsPlugin);

  // Alive while every queue's fetch loop runs; a worker whose loop ended needs a restart.
  app.get("/healthz", async () => {
    const stopped = deps.worker.workers.filter((w) => !w.isRunning()).map((w) => w.name);
    if (stopped.length > 0) {
      throw new ApiError(503, `Not alive: queue workers stopped: ${stopped.join(", ")}`, {
        code: "not_alive",
      });
    }
    return { status: "ok" as const };
  });

  app.get("/readyz", async () => {
    const [postgres, redis] = await Promise.allSettled([
      withTimeout(deps.db.prisma.$queryRaw`SELECT 1`),
      withTimeout(deps.connection.ping()),
    ]);
    const problems = [
      postgres.status === "rejected" ? `postgres: ${firstLine(postgres.reason)}` : null,
      redis.status === "rejected" ? `redis: ${firstLine(redis.reason)}` : null,
    ].filter((p) => p !== null);
    if (problems.length > 0) {
      throw new ApiError(503, `Not ready: ${problems.join("; ")}`, { code: "not_ready" });
    }
    return { status: "ready" as const, postgres: "ok", redis: "ok" };
  });

  return app;
}

/** A dependency that drops packets would leave a probe hanging; it must answer in time. */
async function withTimeout<T>(promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no answer within ${CHECK_TIMEOUT_MS} ms`)),
      CHECK_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function firstLine(reason: unknown): string {
  return String((reason as Error)?.message ?? reason).split("\n")[0];
}

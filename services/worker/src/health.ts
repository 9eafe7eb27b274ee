// The worker's HTTP face for orchestrators (CHATRL_WORKER_HEALTH_PORT): liveness and readiness.
// A worker needs no other HTTP; runs and progress are read through the api.
import {
  ApiError,
  checkReadiness,
  errorsPlugin,
  metricsPlugin,
  READINESS_TIMEOUT_MS,
} from "@chatrl/contracts";
import type { Database } from "@chatrl/db";
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import type IORedis from "ioredis";
import type { Logger } from "pino";
import { backendReport } from "./backend-report.ts";
import { registerWorkerMetrics } from "./metrics.ts";
import type { RunningWorker } from "./worker.ts";

export type HealthDeps = {
  db: Database;
  connection: IORedis;
  worker: Pick<RunningWorker, "workers" | "backend">;
  logger?: Logger;
};

export async function buildHealthApp(deps: HealthDeps): Promise<FastifyInstance> {
  const app = Fastify({ loggerInstance: deps.logger as FastifyBaseLogger | undefined });
  await app.register(errorsPlugin);
  // GET /metrics: HTTP and process series, plus the stages this worker trains (metrics.ts).
  await app.register(metricsPlugin, { service: "worker" });
  const metrics = registerWorkerMetrics(app.metrics, deps.worker.workers, deps.db.prisma);
  app.addHook("onClose", async () => metrics.detach());

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

  // Ready when Postgres and Redis answer; says what it trains on (backend, native kernels).
  app.get("/readyz", async () => ({
    ...(await checkReadiness(
      {
        postgres: () => deps.db.prisma.$queryRaw`SELECT 1`,
        redis: () => deps.connection.ping(),
        // An internal port for the orchestrator: it may see why (hosts, ports).
      },
      READINESS_TIMEOUT_MS,
      { detail: true },
    )),
    backend: backendReport(deps.worker.backend),
  }));

  return app;
}

// A worker process: one BullMQ Worker per stage queue it serves, all sharing one accelerator.
import type { ChatrlConfig } from "@chatrl/contracts";
import type { Database } from "@chatrl/db";
import { type BackendInfo, type BackendName, initBackend } from "@chatrl/engine";
import { STAGE_QUEUES, type StageJobData } from "@chatrl/queue";
import { Mutex } from "async-mutex";
import { Worker } from "bullmq";
import type IORedis from "ioredis";
import { type Logger, pino } from "pino";
import {
  backendReport,
  describeBackend,
  NativeKernelsMissingError,
  needsNativeKernels,
} from "./backend-report.ts";
import { DEFAULT_WORKER_OPTIONS, type WorkerOptions } from "./options.ts";
import { createReconciler, type Reconciler } from "./reconciler.ts";
import { DEFAULT_RESILIENCE_OPTIONS, type ResilienceOptions } from "./resilience-options.ts";
import { PROCESSORS } from "./processors.ts";
import type { ProcessorTable } from "./stage-loop.ts";
import { failAbandonedStage, recordStalled, runStage, STALLED_OUT } from "./stage-runner.ts";
import { ABORT_LOCK_LOST, ABORT_SHUTDOWN, type StageContext, type StageResult } from "./types.ts";

export type WorkerDeps = {
  db: Database;
  connection: IORedis;
  /** Overrides config.backend. */
  backend?: BackendName;
  logger?: Logger;
  /** The processor of each stage kind; default PROCESSORS (a worker may train fewer kinds). */
  processors?: ProcessorTable;
};

export type RunningWorker = {
  /** The tensor backend this worker trains on. */
  device: string;
  /** That backend in full: threads, and whether the native OpenBLAS kernels serve it. */
  backend: BackendInfo;
  workers: Worker<StageJobData, StageResult>[];
  /** Compares Postgres with the queues every reconcileIntervalMs; runOnce() for a pass now. */
  reconciler: Reconciler;
  /**
   * Stops taking jobs; a stage in progress saves a checkpoint and goes back to the queue for
   * the next worker. Leaves the database and Redis connection to their owner.
   */
  close(): Promise<void>;
};

export async function startWorker(
  config: ChatrlConfig,
  deps: WorkerDeps,
  options: Partial<WorkerOptions & ResilienceOptions> = {},
): Promise<RunningWorker> {
  const timing = { ...DEFAULT_WORKER_OPTIONS, ...DEFAULT_RESILIENCE_OPTIONS, ...options };
  const logger = deps.logger ?? pino({ name: "worker", level: config.logLevel });
  const backend = await initBackend(deps.backend ?? config.backend);
  if (needsNativeKernels(backend) && !backend.native) {
    if (timing.requireNativeKernels) throw new NativeKernelsMissingError(backend);
    logger.warn({ backend: backendReport(backend) }, `tensor backend: ${describeBackend(backend)}`);
  } else {
    logger.info({ backend: backendReport(backend) }, `tensor backend: ${describeBackend(backend)}`);
  }
  const ctx: StageContext = {
    prisma: deps.db.prisma,
    device: backend.name,
    logger,
    processors: deps.processors ?? PROCESSORS,
    retry: { baseMs: timing.retryBaseMs, maxMs: timing.retryMaxMs },
    lockDurationMs: timing.lockDurationMs,
  };
  // Each queue has its own Worker, but the process has one accelerator: one stage at a time.
  const device = new Mutex();

  const workers = config.queues.map((kind) => {
    const worker = new Worker<StageJobData, StageResult>(
      STAGE_QUEUES[kind],
      (job, token, signal) => device.runExclusive(() => runStage(ctx, job, token, signal)),
      {
        connection: deps.connection,
        prefix: config.queuePrefix,
        concurrency: 1,
        lockDuration: timing.lockDurationMs,
        stalledInterval: timing.stalledIntervalMs,
        maxStalledCount: timing.maxStalledCount,
      },
    );
    worker.on("lockRenewalFailed", (jobIds) => {
      for (const id of jobIds) worker.cancelJob(id, ABORT_LOCK_LOST);
    });
    worker.on("error", (err) => logger.error({ err, queue: kind }, "queue error"));
    worker.on("active", (job) => logger.info({ jobId: job.id, queue: kind }, "stage started"));
    worker.on("completed", (job, result) =>
      logger.info({ jobId: job.id, queue: kind, result }, "stage done"),
    );
    // Emitted by whichever worker's stalled-job checker found the job's lock expired.
    worker.on("stalled", (jobId) => {
      recordStalled(ctx, jobId).catch((e) =>
        logger.error({ err: e, jobId }, "could not record a stalled stage"),
      );
    });
    worker.on("failed", (job, err) => {
      logger.warn({ jobId: job?.id, queue: kind, reason: err.message }, "stage failed");
      // Emitted by whichever worker's stalled-job checker gave up on the job.
      if (job && err.message === STALLED_OUT) {
        failAbandonedStage(ctx, job.data).catch((e) =>
          logger.error({ err: e, jobId: job.id }, "could not fail an abandoned stage"),
        );
      }
    });
    return worker;
  });
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  // Puts Redis right when it lost jobs, and records failures the database missed (any number of
  // replicas: one at a time acts).
  const reconciler = createReconciler(
    { db: deps.db, redisUrl: config.redisUrl, prefix: config.queuePrefix, logger },
    { intervalMs: timing.reconcileIntervalMs, graceMs: timing.reconcileGraceMs },
  );
  logger.info(
    {
      queues: config.queues,
      prefix: config.queuePrefix,
      backend: backend.name,
      nativeKernels: backend.native,
      ...timing,
    },
    "worker ready",
  );

  return {
    device: backend.name,
    backend,
    workers,
    reconciler,
    async close() {
      await reconciler.close();
      for (const w of workers) w.cancelAllJobs(ABORT_SHUTDOWN);
      await Promise.all(workers.map((w) => w.close()));
    },
  };
}

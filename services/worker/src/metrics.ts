// The worker's Prometheus series, served on its health port's /metrics: stages this process
// started and finished (by kind and outcome), the stage it is training now, training tokens and
// tokens per second, and TensorFlow.js memory. All come from the BullMQ Worker events the stage
// runner already causes (active, progress, completed, failed) and the stage rows in Postgres;
// nothing in the training loop knows about Prometheus.
import { getStage } from "@chatrl/db";
import { tf } from "@chatrl/engine";
import type { StageJobData } from "@chatrl/queue";
import type { Job, Worker } from "bullmq";
import { Counter, Gauge, type Registry } from "@chatrl/contracts";
import type { StageResult } from "./types.ts";

type StageWorker = Worker<StageJobData, StageResult>;
type Prisma = Parameters<typeof getStage>[0];

export type WorkerMetrics = {
  /** Stops listening to the workers' events. */
  detach(): void;
};

export function registerWorkerMetrics(
  registry: Registry,
  workers: StageWorker[],
  prisma: Prisma,
): WorkerMetrics {
  const registers = [registry];
  const started = new Counter({
    name: "chatrl_worker_stages_started_total",
    help: "Stage jobs this worker took (a resumed stage counts again).",
    labelNames: ["kind"],
    registers,
  });
  const finished = new Counter({
    name: "chatrl_worker_stages_finished_total",
    help: "Stage jobs this worker ended, by outcome: succeeded, cancelled or failed.",
    labelNames: ["kind", "status"],
    registers,
  });
  // Stage jobs in progress by kind; the gauge reads it when scraped.
  const running = new Map<string, number>([
    ["sft", 0],
    ["reward", 0],
    ["ppo", 0],
  ]);
  new Gauge({
    name: "chatrl_worker_active_stages",
    help: "Stages this worker is training now (at most one: one accelerator per process).",
    labelNames: ["kind"],
    registers,
    collect() {
      for (const [kind, n] of running) this.set({ kind }, n);
    },
  });
  const tokens = new Counter({
    name: "chatrl_training_tokens_total",
    help: "Tokens trained on by this worker, by stage kind.",
    labelNames: ["kind"],
    registers,
  });
  const tokensPerSecond = new Gauge({
    name: "chatrl_training_tokens_per_second",
    help: "Tokens per device second of the latest progress report, by stage kind.",
    labelNames: ["kind"],
    registers,
  });
  const step = new Gauge({
    name: "chatrl_training_step",
    help: "The latest step reported by the stage in training, by kind.",
    labelNames: ["kind"],
    registers,
  });
  new Gauge({
    name: "chatrl_tfjs_memory_bytes",
    help: "Bytes held by TensorFlow.js tensors in this process (weights, optimizer state).",
    registers,
    collect() {
      this.set(tf.memory().numBytes);
    },
  });
  new Gauge({
    name: "chatrl_tfjs_tensors",
    help: "TensorFlow.js tensors alive in this process.",
    registers,
    collect() {
      this.set(tf.memory().numTensors);
    },
  });
  // The stage's token total when this worker last looked: progress adds the difference.
  const seen = new Map<string, number>();
  const stageTokens = async (stageId: string) =>
    Number((await getStage(prisma, stageId))?.tokens ?? 0);
  const ignore = () => {};

  const listeners = workers.map((worker) => {
    const onActive = (job: Job<StageJobData>) => {
      const { kind, stageId } = job.data;
      started.inc({ kind });
      running.set(kind, (running.get(kind) ?? 0) + 1);
      // A resumed stage's earlier tokens were counted by whoever trained them.
      stageTokens(stageId).then((n) => seen.set(stageId, n), ignore);
    };
    const onProgress = (job: Job<StageJobData>, progress: unknown) => {
      const { kind, stageId } = job.data;
      const report = (progress ?? {}) as { step?: number; tokens_per_s?: number };
      if (typeof report.tokens_per_s === "number")
        tokensPerSecond.set({ kind }, report.tokens_per_s);
      if (typeof report.step === "number") step.set({ kind }, report.step);
      stageTokens(stageId).then((n) => {
        const before = seen.get(stageId) ?? n;
        if (n > before) tokens.inc({ kind }, n - before);
        seen.set(stageId, Math.max(before, n));
      }, ignore);
    };
    const ended = (job: Job<StageJobData> | undefined, status: string) => {
      if (!job) return;
      const { kind, stageId } = job.data;
      finished.inc({ kind, status });
      running.set(kind, Math.max(0, (running.get(kind) ?? 1) - 1));
      // Tokens of the steps after the last progress report.
      stageTokens(stageId).then((n) => {
        const before = seen.get(stageId) ?? n;
        if (n > before) tokens.inc({ kind }, n - before);
        seen.delete(stageId);
      }, ignore);
    };
    const onCompleted = (job: Job<StageJobData>, result: StageResult) =>
      ended(job, result?.status ?? "succeeded");
    const onFailed = (job: Job<StageJobData> | undefined) => ended(job, "failed");
    worker.on("active", onActive);
    worker.on("progress", onProgress);
    worker.on("completed", onCompleted);
    worker.on("failed", onFailed);
    return () => {
      worker.off("active", onActive);
      worker.off("progress", onProgress);
      worker.off("completed", onCompleted);
      worker.off("failed", onFailed);
    };
  });

  return {
    detach() {
      for (const off of listeners) off();
    },
  };
}

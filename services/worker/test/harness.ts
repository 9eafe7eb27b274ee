// Shared set-up of the worker tests: a database, a Redis prefix, a dataset, and runs submitted
// the way the api submits them (db repositories, then enqueueRun), without the HTTP layer.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import {
  type ChatrlConfig,
  loadConfig,
  PPO_DEFAULTS,
  type PpoHyperparameters,
  REWARD_DEFAULTS,
  type RewardHyperparameters,
  type RunSpec,
  SFT_DEFAULTS,
  type SftHyperparameters,
  type StageKind,
  type StageName,
} from "@chatrl/contracts";
import { createDataset, createRun, getStage, listEvents } from "@chatrl/db";
import { createFlowProducer, enqueueRun, redisConnection, STAGE_QUEUES } from "@chatrl/queue";
import { type FlowProducer, Queue } from "bullmq";
import type IORedis from "ioredis";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { createTestRedis, type TestRedis } from "../../../test/support/redis.ts";

/** The fastest backend that is always installed (tfjs-node is optional). */
export const TEST_BACKEND = "wasm";

/**
 * Short sums, so an example fits 32 byte tokens with the chat template and a training step of
 * the tiny model takes tens of milliseconds.
 */
export const SFT_ROWS = Array.from({ length: 40 }, (_, i) => ({
  prompt: `${i % 5}+${i % 4}`,
  response: `${(i % 5) + (i % 4)}`,
}));

export type Harness = {
  tdb: TestDatabase;
  redis: TestRedis;
  connection: IORedis;
  flow: FlowProducer;
  config: ChatrlConfig;
  datasetId: string;
  queue(kind: StageKind): Queue;
  submitRun(opts?: {
    sft?: Partial<SftHyperparameters>;
    pricePerHour?: number;
    kinds?: StageKind[];
    model?: RunSpec["model"];
    dataSplit?: RunSpec["data_split"];
    /** The stages the dataset feeds (default all three). */
    datasetStages?: StageName[];
    reward?: Partial<RewardHyperparameters>;
    ppo?: Partial<PpoHyperparameters>;
  }): Promise<{ runId: string; stageId: string }>;
  close(): Promise<void>;
};

export async function createHarness(): Promise<Harness> {
  const tdb = await createTestDatabase();
  const redis = await createTestRedis();
  const connection = redisConnection(redis.url);
  const flow = createFlowProducer(connection, redis.prefix);
  const config = loadConfig({
    DATABASE_URL: tdb.url,
    REDIS_URL: redis.url,
    CHATRL_QUEUE_PREFIX: redis.prefix,
    CHATRL_QUEUES: "sft,reward",
    CHATRL_LOG_LEVEL: "silent",
    CHATRL_BACKEND: TEST_BACKEND,
  });
  const dataset = await createDataset(tdb.db.prisma, {
    name: "additions",
    format: "supervised",
    rows: SFT_ROWS,
  });
  const queues = new Map<StageKind, Queue>();

  return {
    tdb,
    redis,
    connection,
    flow,
    config,
    datasetId: dataset.id,
    queue(kind) {
      let q = queues.get(kind);
      if (!q) {
        q = new Queue(STAGE_QUEUES[kind], { connection, prefix: redis.prefix });
        queues.set(kind, q);
      }
      return q;
    },
    async submitRun(opts = {}) {
      const sft: SftHyperparameters = {
        ...SFT_DEFAULTS,
        max_steps: 12,
        batch_size: 2,
        learning_rate: 1e-2,
        max_seq_len: 32,
        epochs: 100,
        checkpoint_every: 4,
        warmup_steps: 1,
        weight_decay: 0.0,
        grad_clip: 1.0,
        ...opts.sft,
      };
      const kinds = opts.kinds ?? ["sft"];
      const spec: RunSpec = {
        name: "worker test",
        model: opts.model ?? { preset: "tiny" },
        datasets: [
          { id: dataset.id, weight: 1, stages: opts.datasetStages ?? ["sft", "reward", "ppo"] },
        ],
        data_split: opts.dataSplit ?? [8, 1, 1],
        // sft settings always (the test processors read them); the defaults of the other kinds run.
        stages: {
          sft,
          ...(kinds.includes("reward") && { reward: { ...REWARD_DEFAULTS, ...opts.reward } }),
          ...(kinds.includes("ppo") && { ppo: { ...PPO_DEFAULTS, ...opts.ppo } }),
        },
        compute: { device: "cpu", price_per_hour: opts.pricePerHour ?? 0 },
        seed: 7,
      };
      const run = await createRun(tdb.db.prisma, {
        name: spec.name,
        spec,
        // The stage row's max_steps until the trainer says how many steps it really takes.
        stages: kinds.map((kind) => ({ kind, maxSteps: sft.max_steps ?? 0 })),
      });
      await enqueueRun(flow, run);
      return { runId: run.id, stageId: run.stages[0].id };
    },
    async close() {
      for (const q of queues.values()) await q.close();
      await flow.close();
      await connection.quit();
      await redis.cleanup();
      await tdb.drop();
    },
  };
}

/**
 * Short locks so a dead worker's job is handed on within seconds. The lock must still outlast
 * the longest training step, which on a loaded two-core machine can take a second or more.
 */
export const FAST_TIMING = { lockDurationMs: 3000, stalledIntervalMs: 1000, maxStalledCount: 3 };

/** The run's event messages, newest first. */
export async function eventMessages(h: Harness, runId: string): Promise<string[]> {
  const events = await listEvents(h.tdb.db.prisma, runId, { limit: 100 });
  return events.data.map((e) => e.message);
}

const FINISHED = ["succeeded", "failed", "cancelled"];

/**
 * Waits until the stage is in `status`; fails at once when it finishes in another status (with
 * the stage's error), or after `timeout` ms.
 */
export async function waitForStage(h: Harness, stageId: string, status: string, timeout = 30_000) {
  return waitUntil(async () => {
    const stage = await getStage(h.tdb.db.prisma, stageId);
    if (stage?.status === status) return stage;
    if (stage && FINISHED.includes(stage.status)) {
      throw new Error(`stage ${stageId} ${stage.status} (${stage.error}), expected ${status}`);
    }
    return undefined;
  }, timeout);
}

/** Waits until the stage has reported `step` steps; fails at once if it finished first. */
export async function waitForStep(h: Harness, stageId: string, step: number, timeout = 60_000) {
  return waitUntil(
    async () => {
      const stage = await getStage(h.tdb.db.prisma, stageId);
      if (stage && stage.step >= step) return stage;
      if (stage && FINISHED.includes(stage.status)) {
        throw new Error(`stage ${stage.status} (${stage.error}) before step ${step}`);
      }
      return undefined;
    },
    timeout,
    `step ${step}`,
  );
}

/** Polls `probe` until it returns a value; an error it throws ends the wait at once. */
export async function waitUntil<T>(
  probe: () => Promise<T | undefined>,
  timeout = 30_000,
  what = "condition",
): Promise<T> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));

/** The worker's real entry point in its own process, configured by environment variables. */
export function spawnWorkerProcess(
  h: Harness,
  opts: { healthPort?: number; env?: Record<string, string>; captureStderr?: boolean } = {},
): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", MAIN], {
    env: {
      ...process.env,
      DATABASE_URL: h.tdb.url,
      REDIS_URL: h.redis.url,
      CHATRL_QUEUE_PREFIX: h.redis.prefix,
      CHATRL_QUEUES: "sft",
      CHATRL_LOG_LEVEL: "warn",
      CHATRL_BACKEND: TEST_BACKEND,
      CHATRL_WORKER_HEALTH_PORT: opts.healthPort ? String(opts.healthPort) : "",
      CHATRL_HOST: "127.0.0.1",
      // A dead child's job must come back quickly (but the lock must outlast one step).
      CHATRL_WORKER_LOCK_MS: String(FAST_TIMING.lockDurationMs),
      CHATRL_WORKER_STALLED_INTERVAL_MS: String(FAST_TIMING.stalledIntervalMs),
      ...opts.env,
    },
    stdio: ["ignore", "inherit", opts.captureStderr ? "pipe" : "inherit"],
  });
  return child;
}

export { freePort } from "../../../test/support/process.ts";

export function exited(
  child: ChildProcess,
): Promise<{ code: number | null; signal: string | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

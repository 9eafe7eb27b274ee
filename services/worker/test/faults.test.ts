// Runs survive Postgres and Redis faults: a TCP proxy stopped and started between the worker and
// Postgres, a Redis that loses its keys, a worker killed mid-stage. Each run ends without a hand
// on it, and no step is counted twice.
import { tmpdir } from "node:os";
import { type Database, getRun, getStage, listEvents, listMetrics, openDatabase } from "@chatrl/db";
import type { StageTrainer, StepReport } from "@chatrl/engine";
import { Redis } from "ioredis";
import { Worker } from "bullmq";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postgresProxy, type PostgresProxy } from "../../../test/support/postgres.ts";
import { createReconciler } from "../src/reconciler.ts";
import { sftProcessor } from "../src/sft-stage.ts";
import type { ProcessorTable, StageProcessor } from "../src/stage-loop.ts";
import { type RunningWorker, startWorker } from "../src/worker.ts";
import {
  createHarness,
  eventMessages,
  exited,
  FAST_TIMING,
  type Harness,
  spawnWorkerProcess,
  waitForStage,
  waitForStep,
  waitUntil,
} from "./harness.ts";

const quiet = pino({ level: "silent" });
// Short pauses so a test outage of 2 s costs about 2 s.
const FAST_RETRY = { retryBaseMs: 100, retryMaxMs: 500 };
const NO_RECONCILER = { reconcileIntervalMs: 0, reconcileGraceMs: 0 };

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  await h?.close();
});

const prisma = () => h.tdb.db.prisma;

/** Every metric of the stage at most once per step, and the reported steps exactly `steps`. */
async function expectEachStepOnce(runId: string, steps: number[]) {
  const metrics = await listMetrics(prisma(), runId, { stage: "sft" });
  const keys = metrics.map((m) => `${m.name}@${m.step}`);
  expect(new Set(keys).size).toBe(keys.length);
  const reported = metrics.filter((m) => m.name === "loss").map((m) => m.step);
  expect([...reported].sort((a, b) => a - b)).toEqual(steps);
}

const everyOther = (max: number) => Array.from({ length: max / 2 }, (_, i) => 2 * (i + 1));

describe("a Postgres outage during a stage", () => {
  let proxy: PostgresProxy;
  let workerDb: Database;

  beforeAll(async () => {
    proxy = await postgresProxy(h.tdb.url);
    workerDb = await openDatabase({ databaseUrl: proxy.url, dataDir: tmpdir(), maxConnections: 4 });
  });
  afterAll(async () => {
    await workerDb?.close();
    await proxy?.close();
  });

  async function withProxiedWorker<T>(
    fn: (w: RunningWorker) => Promise<T>,
    processors?: ProcessorTable,
  ): Promise<T> {
    const w = await startWorker(
      h.config,
      { db: workerDb, connection: h.connection, logger: quiet, processors },
      { ...FAST_TIMING, ...FAST_RETRY, ...NO_RECONCILER },
    );
    try {
      return await fn(w);
    } finally {
      await w.close();
    }
  }

  it("pauses the stage, goes on from its newest checkpoint when Postgres is back, and succeeds", async () => {
    await withProxiedWorker(async () => {
      // checkpoint_every 10: a metric report every 2 steps, a checkpoint every 10.
      const { runId, stageId } = await h.submitRun({
        sft: { max_steps: 60, checkpoint_every: 10 },
      });
      await waitForStep(h, stageId, 14);
      await proxy.stop();
      await new Promise((r) => setTimeout(r, 2000));
      // Nothing could be written meanwhile, and the stage is not failed.
      const during = (await getStage(prisma(), stageId))!;
      expect(during.status).toBe("running");
      await proxy.start();

      const stage = await waitForStage(h, stageId, "succeeded", 90_000);
      expect(stage.step).toBe(60);
      expect((await getRun(prisma(), runId))?.status).toBe("succeeded");
      await expectEachStepOnce(runId, everyOther(60));

      const events = await eventMessages(h, runId);
      expect(
        events.some((m) =>
          /^sft paused at step \d+ for [\d.]+ s: Postgres or Redis was unreachable/.test(m),
        ),
      ).toBe(true);
      const resumed = events.find((m) => /^sft resumed from step \d+$/.test(m));
      expect(resumed, events.join("\n")).toBeDefined();
      expect(Number(resumed!.split(" ").at(-1)) % 10).toBe(0); // a checkpoint's step
      const errors = (await listEvents(prisma(), runId, { limit: 100 })).data.filter(
        (e) => e.level === "error",
      );
      expect(errors).toEqual([]);
      expect(await h.queue("sft").getJobState(stageId)).toBe("completed");
    });
  });

  it("fails a stage whose training fails while Postgres is down, once Postgres is back", async () => {
    let releaseFailure!: () => void;
    const failureMayHappen = new Promise<void>((resolve) => {
      releaseFailure = resolve;
    });
    // SFT whose 5th step throws, but only after the test has taken Postgres away.
    const failing: StageProcessor = {
      async open(ctx, spec, stage, resume) {
        const session = await sftProcessor.open(ctx, spec, stage, resume);
        const trainer = session.trainer;
        const wrapped: StageTrainer = {
          get step() {
            return trainer.step;
          },
          get totalSteps() {
            return trainer.totalSteps;
          },
          async trainStep(): Promise<StepReport> {
            if (trainer.step === 4) {
              await failureMayHappen;
              throw new Error("the loss is NaN at step 5");
            }
            return trainer.trainStep();
          },
          exportState: () => trainer.exportState(),
          importState: (bytes) => trainer.importState(bytes),
          dispose: () => trainer.dispose(),
        };
        return {
          trainer: wrapped,
          checkpointEvery: session.checkpointEvery,
          reportEvery: session.reportEvery,
          dataStats: session.dataStats,
          describe: () => session.describe(),
          checkpointFiles: () => session.checkpointFiles(),
          dispose: () => session.dispose(),
        };
      },
    };
    await withProxiedWorker(
      async () => {
        const { runId, stageId } = await h.submitRun({
          sft: { max_steps: 20, checkpoint_every: 10 },
        });
        await waitForStep(h, stageId, 4);
        await proxy.stop();
        releaseFailure();
        await new Promise((r) => setTimeout(r, 1500));
        expect((await getStage(prisma(), stageId))?.status).toBe("running");
        await proxy.start();

        const failed = await waitUntil(
          async () => {
            const s = await getStage(prisma(), stageId);
            return s?.status === "failed" ? s : undefined;
          },
          30_000,
          "the failure to be recorded",
        );
        expect(failed.error).toBe("the loss is NaN at step 5");
        expect((await getRun(prisma(), runId))?.error).toBe(
          "sft stage failed: the loss is NaN at step 5",
        );
        const events = await eventMessages(h, runId);
        expect(
          events.filter((m) => m === "sft stage failed: the loss is NaN at step 5"),
        ).toHaveLength(1);
        await waitUntil(
          async () => ((await h.queue("sft").getJobState(stageId)) === "failed" ? true : undefined),
          10_000,
          "the job to fail",
        );
      },
      { sft: failing },
    );
  });
});

/** Deletes every key under the test's prefix, as a Redis restarted without persistence would. */
async function loseRedisKeys(): Promise<number> {
  const redis = new Redis(h.redis.url, { maxRetriesPerRequest: 1 });
  let removed = 0;
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${h.redis.prefix}:*`, "COUNT", 500);
      if (keys.length > 0) removed += await redis.del(...keys);
      cursor = next;
    } while (cursor !== "0");
  } finally {
    await redis.quit();
  }
  return removed;
}

describe("a Redis that loses its keys", () => {
  it("queues a running stage again from its newest checkpoint, and the run succeeds", async () => {
    const w = await startWorker(
      h.config,
      { db: h.tdb.db, connection: h.connection, logger: quiet },
      { ...FAST_TIMING, ...FAST_RETRY, reconcileIntervalMs: 500, reconcileGraceMs: 0 },
    );
    try {
      const { runId, stageId } = await h.submitRun({
        sft: { max_steps: 60, checkpoint_every: 10 },
      });
      await waitForStep(h, stageId, 14);
      expect(await loseRedisKeys()).toBeGreaterThan(0);

      const stage = await waitForStage(h, stageId, "succeeded", 90_000);
      expect(stage.step).toBe(60);
      await expectEachStepOnce(runId, everyOther(60));
      const events = await eventMessages(h, runId);
      expect(events.join("\n")).toMatch(
        /sft stage was running but its job was missing from the queue \(Redis lost it\); queued again, it resumes from its checkpoint at step \d+/,
      );
      expect(events.some((m) => /^sft resumed from step \d+$/.test(m))).toBe(true);
    } finally {
      await w.close();
    }
  });

  it("queues a run whose jobs are all gone, and one reconciler of many acts", async () => {
    const { runId, stageId } = await h.submitRun({ sft: { max_steps: 4 } });
    await loseRedisKeys();
    const make = () =>
      createReconciler(
        { db: h.tdb.db, redisUrl: h.redis.url, prefix: h.redis.prefix, logger: quiet },
        { intervalMs: 0, graceMs: 0 },
      );
    const replicas = [make(), make(), make()];
    try {
      const reports = await Promise.all(replicas.map((r) => r.runOnce()));
      expect(reports.flatMap((r) => r.requeued)).toEqual([stageId]);
      expect(await h.queue("sft").getJobState(stageId)).toBe("waiting");
      // A second pass finds nothing to do.
      expect((await replicas[0].runOnce()).requeued).toEqual([]);
      const events = await eventMessages(h, runId);
      expect(events.filter((m) => m.includes("job was missing"))).toEqual([
        "sft stage was queued but its job was missing from the queue (Redis lost it); queued again, it resumes from the start",
      ]);
    } finally {
      for (const r of replicas) await r.close();
      await h.queue("sft").obliterate({ force: true });
    }
  });

  it("records the failure of a job that failed while its stage could not be failed", async () => {
    const { runId, stageId } = await h.submitRun({ sft: { max_steps: 4 } });
    // A processor that fails the job without reaching Postgres, as a worker cut off from it.
    const bare = new Worker(
      "sft",
      async () => {
        throw new Error("device lost");
      },
      { connection: h.connection, prefix: h.redis.prefix },
    );
    const reconciler = createReconciler(
      { db: h.tdb.db, redisUrl: h.redis.url, prefix: h.redis.prefix, logger: quiet },
      { intervalMs: 0, graceMs: 0 },
    );
    try {
      await waitUntil(
        async () => ((await h.queue("sft").getJobState(stageId)) === "failed" ? true : undefined),
        10_000,
        "the job to fail",
      );
      await bare.close();
      expect((await getStage(prisma(), stageId))?.status).toBe("queued");
      expect((await reconciler.runOnce()).failed).toEqual([stageId]);
      expect(await getStage(prisma(), stageId)).toMatchObject({
        status: "failed",
        error: "device lost",
      });
      expect(await eventMessages(h, runId)).toContain("sft stage failed: device lost");
    } finally {
      await bare.close();
      await reconciler.close();
    }
  });
});

describe("a worker that dies mid-stage", () => {
  it("says so in the run's events, and its successor resumes from the last checkpoint", async () => {
    const { runId, stageId } = await h.submitRun({ sft: { max_steps: 30, checkpoint_every: 5 } });
    const child = spawnWorkerProcess(h, { env: { CHATRL_RECONCILE_INTERVAL_MS: "0" } });
    try {
      await waitForStep(h, stageId, 6);
      child.kill("SIGKILL");
      await exited(child);
    } finally {
      child.kill("SIGKILL");
    }
    const w = await startWorker(
      h.config,
      { db: h.tdb.db, connection: h.connection, logger: quiet },
      { ...FAST_TIMING, ...NO_RECONCILER },
    );
    try {
      await waitForStage(h, stageId, "succeeded", 60_000);
      const events = await eventMessages(h, runId);
      expect(events.join("\n")).toMatch(
        /sft lost its worker at step \d+ \(it stopped renewing its job's lock\); the stage goes back to the queue and resumes from its checkpoint at step \d+/,
      );
      await expectEachStepOnce(
        runId,
        Array.from({ length: 30 }, (_, i) => i + 1),
      );
    } finally {
      await w.close();
    }
  });
});

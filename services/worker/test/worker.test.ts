import { createHash } from "node:crypto";
import {
  cancelRun,
  getRun,
  getStage,
  latestCheckpoint,
  listCheckpoints,
  listMetrics,
  readCheckpointPart,
  saveCheckpoint,
} from "@chatrl/db";
import { GPT, loadModel, MODEL_PRESETS, saveModel, tf } from "@chatrl/engine";
import { STAGE_QUEUES, type StageKind } from "@chatrl/queue";
import { Worker } from "bullmq";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadWorkerOptions } from "../src/options.ts";
import { sftProcessor } from "../src/sft-stage.ts";
import type { ProcessorTable } from "../src/stage-loop.ts";
import { type RunningWorker, startWorker } from "../src/worker.ts";
import {
  createHarness,
  eventMessages as runEvents,
  exited,
  FAST_TIMING,
  freePort,
  type Harness,
  spawnWorkerProcess,
  waitForStage,
  waitUntil,
} from "./harness.ts";

const quiet = pino({ level: "silent" });

let h: Harness;

beforeAll(async () => {
  h = await createHarness();
});

afterAll(async () => {
  await h?.close();
});

async function withWorker<T>(
  fn: (w: RunningWorker) => Promise<T>,
  processors?: ProcessorTable,
  queues = h.config.queues,
): Promise<T> {
  const w = await startWorker(
    { ...h.config, queues },
    { db: h.tdb.db, connection: h.connection, logger: quiet, processors },
    FAST_TIMING,
  );
  try {
    return await fn(w);
  } finally {
    await w.close();
  }
}

/** Waits until the stage has reported `step` steps; fails at once if it finished first. */
async function waitForStep(stageId: string, step: number) {
  return waitUntil(
    async () => {
      const stage = (await getStage(h.tdb.db.prisma, stageId))!;
      if (stage.step >= step) return stage;
      if (stage.status !== "queued" && stage.status !== "running") {
        throw new Error(`stage ${stage.status} (${stage.error}) before step ${step}`);
      }
      return undefined;
    },
    30_000,
    `step ${step}`,
  );
}

/** The stage's job once BullMQ has it in `state`, read after the move so its result is there. */
async function jobIn(kind: StageKind, stageId: string, state: "completed" | "failed") {
  return waitUntil(
    async () =>
      (await h.queue(kind).getJobState(stageId)) === state
        ? await h.queue(kind).getJob(stageId)
        : undefined,
    30_000,
    `the ${kind} job to be ${state}`,
  );
}

const eventMessages = (runId: string) => runEvents(h, runId);

describe("sft stage jobs", () => {
  it("trains an SFT stage to succeeded, with falling loss, verifiable checkpoints and its cost", async () => {
    await withWorker(async () => {
      const tensorsBefore = tf.memory().numTensors;
      const { runId, stageId } = await h.submitRun({ pricePerHour: 3.6 });
      const job = await jobIn("sft", stageId, "completed");
      expect(job?.returnvalue).toEqual({ stageId, status: "succeeded", step: 12 });
      const stage = (await getStage(h.tdb.db.prisma, stageId))!;
      expect(stage.status).toBe("succeeded");

      expect(stage.step).toBe(12);
      expect(stage.progress).toBe(1);
      expect(stage.deviceSeconds).toBeGreaterThan(0);
      expect(stage.wallSeconds).toBeGreaterThanOrEqual(stage.deviceSeconds);
      expect(Number(stage.tokens)).toBeGreaterThan(0);
      expect(stage.costUsd).toBeCloseTo((3.6 * stage.deviceSeconds) / 3600, 10);
      expect((await getRun(h.tdb.db.prisma, runId))?.status).toBe("succeeded");

      // checkpoint_every 4 -> a metric point every step, loss falling over 12 steps.
      const losses = await listMetrics(h.tdb.db.prisma, runId, { stage: "sft", name: "loss" });
      expect(losses.map((m) => m.step)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
      const first = losses[0].value;
      const lastThree = losses.slice(-3).reduce((a, m) => a + m.value, 0) / 3;
      expect(lastThree).toBeLessThan(first * 0.8);
      for (const name of ["lr", "grad_norm", "tokens_per_s"]) {
        const rows = await listMetrics(h.tdb.db.prisma, runId, { stage: "sft", name });
        expect(rows.length, name).toBe(12);
      }
      const tokensPerS = await listMetrics(h.tdb.db.prisma, runId, { name: "tokens_per_s" });
      expect(tokensPerS.every((m) => m.value > 0)).toBe(true);

      const checkpoints = await listCheckpoints(h.tdb.db.prisma, runId);
      const summary = [...checkpoints]
        .sort((a, b) => a.step - b.step)
        .map((c) => [c.step, c.final, c.role]);
      expect(summary).toEqual([
        [4, false, "sft"],
        [8, false, "sft"],
        [12, true, "sft"],
      ]);
      for (const c of checkpoints) {
        const bytes = await readCheckpointPart(h.tdb.db.prisma, c.id, "model");
        expect(bytes).not.toBeNull();
        expect(createHash("sha256").update(bytes!).digest("hex")).toBe(c.sha256);
        expect(bytes!.length).toBe(c.bytes);
        const trainer = await readCheckpointPart(h.tdb.db.prisma, c.id, "trainer");
        expect(trainer === null).toBe(c.final);
      }
      const final = checkpoints.find((c) => c.final)!;
      expect(final.config).toMatchObject({ vocabSize: 262, dModel: 64, nLayers: 2 });

      // The worker released every tensor of the model and trainer.
      expect(tf.memory().numTensors).toBe(tensorsBefore);
    });
  });

  it("stops a cancelled stage at its next step, leaves it cancelled and writes no final checkpoint", async () => {
    await withWorker(async () => {
      const tensorsBefore = tf.memory().numTensors;
      const { runId, stageId } = await h.submitRun({
        sft: { max_steps: 500, checkpoint_every: 5 },
      });
      await waitForStep(stageId, 2);
      await cancelRun(h.tdb.db.prisma, runId);
      const stepAtCancel = (await getStage(h.tdb.db.prisma, stageId))!.step;

      const done = await jobIn("sft", stageId, "completed");
      expect(done?.returnvalue.status).toBe("cancelled");
      // At most the step in flight when the cancel landed, plus the one that was starting.
      expect(done?.returnvalue.step).toBeLessThanOrEqual(stepAtCancel + 2);

      const stage = (await getStage(h.tdb.db.prisma, stageId))!;
      expect(stage.status).toBe("cancelled");
      expect(stage.step).toBeLessThan(500);
      const checkpoints = await listCheckpoints(h.tdb.db.prisma, runId);
      expect(checkpoints.filter((c) => c.final)).toEqual([]);
      expect(await eventMessages(runId)).toContain(
        `sft cancelled at step ${done?.returnvalue.step}`,
      );
      expect(tf.memory().numTensors).toBe(tensorsBefore);
    });
  });

  it("completes the job of a run cancelled before any worker took it, without training", async () => {
    const { runId, stageId } = await h.submitRun();
    await cancelRun(h.tdb.db.prisma, runId);
    await withWorker(async () => {
      const done = await jobIn("sft", stageId, "completed");
      expect(done?.returnvalue).toEqual({ stageId, status: "cancelled", step: 0 });
    });
    const stage = (await getStage(h.tdb.db.prisma, stageId))!;
    expect(stage).toMatchObject({ status: "cancelled", startedAt: null, step: 0 });
    expect(await listMetrics(h.tdb.db.prisma, runId)).toEqual([]);
  });

  it("hands the stage of a killed worker process to another worker, which resumes from the last checkpoint", async () => {
    const { runId, stageId } = await h.submitRun({ sft: { max_steps: 30, checkpoint_every: 5 } });
    const child = spawnWorkerProcess(h);
    try {
      await waitUntil(
        async () => {
          const ckpt = await latestCheckpoint(h.tdb.db.prisma, stageId);
          return ckpt && ckpt.step >= 5 ? ckpt : undefined;
        },
        30_000,
        "the first periodic checkpoint",
      );
      child.kill("SIGKILL");
      await exited(child);
    } finally {
      child.kill("SIGKILL");
    }
    const atKill = (await getStage(h.tdb.db.prisma, stageId))!;
    expect(atKill.status).toBe("running");
    const resumeStep = (await latestCheckpoint(h.tdb.db.prisma, stageId))!.step;
    expect(resumeStep).toBeLessThan(30);

    const progressSteps: number[] = [];
    const tensorsBefore = tf.memory().numTensors;
    await withWorker(async (w) => {
      for (const worker of w.workers) {
        worker.on("progress", (_job, p) => progressSteps.push((p as { step: number }).step));
      }
      const stage = await waitForStage(h, stageId, "succeeded");
      expect(stage.step).toBe(30);
      // Time and money of both attempts are on the stage.
      expect(stage.deviceSeconds).toBeGreaterThan(atKill.deviceSeconds);
    });
    // The resumed model and the optimizer state read from the checkpoint were released too.
    expect(tf.memory().numTensors).toBe(tensorsBefore);

    expect(await eventMessages(runId)).toContain(`sft resumed from step ${resumeStep}`);
    // The new worker continued from the checkpoint instead of starting over.
    expect(progressSteps[0]).toBe(resumeStep + 1);
    expect(progressSteps.at(-1)).toBe(30);
    const final = (await listCheckpoints(h.tdb.db.prisma, runId)).find((c) => c.final);
    expect(final?.step).toBe(30);
    // Steps the dead worker had reported are not reported twice.
    const steps = (await listMetrics(h.tdb.db.prisma, runId, { name: "loss" })).map((m) => m.step);
    expect(steps).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
  });

  it("stops writing when it loses the job's lock, and the job resumes from the last checkpoint", async () => {
    const { runId, stageId } = await h.submitRun({
      sft: { max_steps: 150, checkpoint_every: 10 },
    });
    await withWorker(async () => {
      await waitUntil(
        async () =>
          ((await latestCheckpoint(h.tdb.db.prisma, stageId))?.step ?? 0) >= 10 || undefined,
        30_000,
        "the first periodic checkpoint",
      );
      // As if Redis lost the lock (failover, eviction): the next renewal fails.
      await h.connection.del(`${h.redis.prefix}:${STAGE_QUEUES.sft}:${stageId}:lock`);
      const stage = await waitForStage(h, stageId, "succeeded");
      expect(stage.step).toBe(150);
    });
    const messages = await eventMessages(runId);
    const resumed = messages.filter((m) => m.startsWith("sft resumed from step "));
    expect(resumed).toHaveLength(1);
    // The attempt that lost the lock wrote no shutdown checkpoint and no "paused" event.
    expect(messages.some((m) => m.startsWith("sft paused"))).toBe(false);
    const steps = (await listCheckpoints(h.tdb.db.prisma, runId)).map((c) => c.step);
    expect(new Set(steps).size).toBe(steps.length);
    expect(steps.every((step) => step % 10 === 0)).toBe(true);
  });

  it("on SIGTERM checkpoints the stage where it is and puts it back in the queue for the next worker", async () => {
    const { runId, stageId } = await h.submitRun({ sft: { max_steps: 60, checkpoint_every: 50 } });
    const healthPort = await freePort();
    const child = spawnWorkerProcess(h, { healthPort });
    let exit: { code: number | null; signal: string | null };
    try {
      await waitForStep(stageId, 10);
      const health = await fetch(`http://127.0.0.1:${healthPort}/healthz`);
      expect(await health.json()).toEqual({ status: "ok" });
      child.kill("SIGTERM");
      exit = await exited(child);
    } finally {
      child.kill("SIGKILL");
    }
    expect(exit).toEqual({ code: 0, signal: null });
    // No periodic checkpoint was due (every 50), so this one was written by the shutdown.
    const paused = (await latestCheckpoint(h.tdb.db.prisma, stageId))!;
    expect(paused.step).toBeGreaterThanOrEqual(10);
    expect(paused.step).toBeLessThan(50);
    expect(await eventMessages(runId)).toContain(
      `sft paused at step ${paused.step}: worker shutting down, the stage goes back to the queue`,
    );
    expect(await h.queue("sft").getJobState(stageId)).toBe("waiting");

    await withWorker(async () => {
      const stage = await waitForStage(h, stageId, "succeeded");
      expect(stage.step).toBe(60);
    });
    expect(await eventMessages(runId)).toContain(`sft resumed from step ${paused.step}`);
  });
});

describe("LoRA", () => {
  it("trains only the adapters a run asks for, and its checkpoints are plain models with them merged", async () => {
    await withWorker(async () => {
      const tensorsBefore = tf.memory().numTensors;
      const { runId, stageId } = await h.submitRun({
        sft: {
          max_steps: 8,
          checkpoint_every: 4,
          lora_dim: 4,
          lora_module_name: "attn.",
          only_optimize_lora: true,
          lora_learning_rate: 1e-2,
        },
      });
      const stage = await waitForStage(h, stageId, "succeeded");
      expect(stage.step).toBe(8);
      // tiny: d_model 64, 2 layers; c_attn 64x4 + 4x192, c_proj 64x4 + 4x64 per layer.
      expect((await eventMessages(runId)).join("\n")).toContain(
        'LoRA rank 4 on 4 projections matching "attn." (3072 parameters, the only ones trained)',
      );
      const checkpoints = await listCheckpoints(h.tdb.db.prisma, runId);
      const final = checkpoints.find((c) => c.final)!;
      const trained = await loadModel(
        (await readCheckpointPart(h.tdb.db.prisma, final.id, "model"))!,
      );
      const start = new GPT(MODEL_PRESETS.tiny, 7); // the preset the harness's run starts from
      try {
        expect(trained.hasLora).toBe(false);
        const before = start.namedWeights();
        const changed = (name: string) => {
          const a = before.get(name)!.dataSync();
          const b = trained.namedWeights().get(name)!.dataSync();
          return a.some((x, i) => x !== b[i]);
        };
        // The adapters of the attention projections trained and were merged in; nothing else moved.
        expect(changed("h.0.attn.c_attn.weight")).toBe(true);
        expect(changed("h.1.attn.c_proj.weight")).toBe(true);
        for (const name of [
          "wte.weight",
          "h.0.mlp.c_fc.weight",
          "h.0.attn.c_attn.bias",
          "ln_f.weight",
        ])
          expect(changed(name), name).toBe(false);
      } finally {
        trained.dispose();
        start.dispose();
      }
      expect(tf.memory().numTensors).toBe(tensorsBefore);
    });
  });
});

describe("the steps a stage reports", () => {
  it("without max_steps trains the steps its epochs take, and reports them as max_steps", async () => {
    await withWorker(async () => {
      // 40 rows, all for sft in an sft-only run; one epoch of batches of 2 is 20 steps.
      const { stageId } = await h.submitRun({
        sft: { max_steps: undefined, epochs: 1, batch_size: 2, checkpoint_every: 50 },
      });
      const stage = await waitForStage(h, stageId, "succeeded");
      expect(stage).toMatchObject({ step: 20, maxSteps: 20, progress: 1 });
    });
  });

  it("with max_steps trains that many steps, repeating the data past its epochs", async () => {
    await withWorker(async () => {
      // 20 steps make one epoch; max_steps 26 decides, as in Hugging Face's Trainer.
      const { stageId } = await h.submitRun({
        sft: { max_steps: 26, epochs: 1, batch_size: 2, checkpoint_every: 50 },
      });
      const stage = await waitForStage(h, stageId, "succeeded");
      expect(stage).toMatchObject({ step: 26, maxSteps: 26, progress: 1 });
    });
  });

  it("finishes a stage whose final checkpoint an earlier attempt wrote at its last step and full progress", async () => {
    const { runId, stageId } = await h.submitRun({ sft: { max_steps: 12 } });
    // The earlier attempt saved the finished model and died before recording anything else.
    const model = new GPT(MODEL_PRESETS.tiny, 7);
    await saveCheckpoint(h.tdb.db.prisma, {
      runId,
      stageId,
      step: 12,
      role: "sft",
      final: true,
      config: model.config,
      model: await saveModel(model),
    });
    model.dispose();
    await withWorker(async () => {
      const stage = await waitForStage(h, stageId, "succeeded");
      expect(stage).toMatchObject({ step: 12, maxSteps: 12, progress: 1 });
    });
  });
});

describe("examples longer than max_seq_len", () => {
  it("counts the examples it cut on the stage and says so in an event when training starts", async () => {
    await withWorker(async () => {
      // Every row is 8 tokens: <|user|>, 3 bytes, <|end|>, <|assistant|>, 1 byte and eos; 7
      // cuts the eos of all 40.
      const { runId, stageId } = await h.submitRun({ sft: { max_seq_len: 7, max_steps: 2 } });
      const stage = await waitForStage(h, stageId, "succeeded");
      expect(stage).toMatchObject({ examplesTruncated: 40, examplesDropped: 0 });
      expect(await eventMessages(runId)).toContain(
        "sft: 40 examples cut to max_seq_len (the end of the answer), 0 dropped (the prompt alone does not fit)",
      );
      const fits = await h.submitRun({ sft: { max_steps: 2 } });
      const whole = await waitForStage(h, fits.stageId, "succeeded");
      expect(whole).toMatchObject({ examplesTruncated: 0, examplesDropped: 0 });
      expect((await eventMessages(fits.runId)).some((m) => m.includes("cut to max_seq_len"))).toBe(
        false,
      );
    });
  });
});

describe("where an SFT stage starts", () => {
  it("fine-tunes from an earlier run's final checkpoint instead of a fresh preset", async () => {
    await withWorker(async () => {
      const first = await h.submitRun({ sft: { max_steps: 12 } });
      await waitForStage(h, first.stageId, "succeeded");
      const base = (await listCheckpoints(h.tdb.db.prisma, first.runId)).find((c) => c.final)!;

      const second = await h.submitRun({
        model: { checkpoint_id: base.id },
        sft: { max_steps: 2, checkpoint_every: 1 },
      });
      await waitForStage(h, second.stageId, "succeeded");
      const loss = async (runId: string) =>
        (await listMetrics(h.tdb.db.prisma, runId, { name: "loss" }))[0].value;
      // Its first step already sees a trained model: lower loss than a fresh model's first step.
      expect(await loss(second.runId)).toBeLessThan((await loss(first.runId)) * 0.8);
    });
  });

  it("trains on its share of the datasets that feed it among the stages the run trains", async () => {
    await withWorker(
      async () => {
        // data_split [1, 1, 0] over a run training sft and reward: sft gets half of the 40 rows,
        // so one epoch of batches of 2 is 10 steps. (The reward job waits in its queue: this
        // worker serves sft only, and the dataset has no preference pairs for it anyway.)
        const { stageId } = await h.submitRun({
          kinds: ["sft", "reward"],
          dataSplit: [1, 1, 0],
          sft: { max_steps: undefined, epochs: 1, checkpoint_every: 50 },
        });
        expect(await waitForStage(h, stageId, "succeeded")).toMatchObject({ step: 10 });
      },
      undefined,
      ["sft"],
    );
  });

  it("fails a stage that cannot train, with the reason, and does not retry it", async () => {
    await withWorker(async () => {
      const cases = [
        {
          opts: { model: { checkpoint_id: "ckpt_000000000000000000000000" } },
          error: "checkpoint ckpt_000000000000000000000000 does not exist",
        },
        {
          opts: { dataSplit: [0, 5, 5] as [number, number, number] },
          error: `the sft stage has no examples: datasets ${h.datasetId} give it 0 rows with data_split [0, 5, 5]`,
        },
        {
          opts: { datasetStages: ["reward" as const, "ppo" as const] },
          error: `the sft stage has no examples: datasets ${h.datasetId} give it 0 rows with data_split [8, 1, 1]`,
        },
        {
          opts: { sft: { max_seq_len: 1000 } },
          error: "SFT config: maxSeqLen 1000 exceeds the model's context length 128",
        },
      ];
      for (const { opts, error } of cases) {
        const { runId, stageId } = await h.submitRun(opts);
        // The job fails after the stage and its event are written.
        const job = await jobIn("sft", stageId, "failed");
        expect(job.failedReason).toBe(error);
        expect(job.attemptsMade).toBe(1);
        const stage = (await getStage(h.tdb.db.prisma, stageId))!;
        expect(stage.status).toBe("failed");
        expect(stage.error).toBe(error);
        expect(await eventMessages(runId)).toContain(`sft stage failed: ${error}`);
      }
    });
  });
});

describe("jobs whose workers keep dying", () => {
  it("fails the stage once BullMQ gives up on a job that stalled more often than allowed", async () => {
    const { runId, stageId } = await h.submitRun();
    // A worker that takes the job and then dies without a word: its lock is never renewed.
    const doomed = new Worker(STAGE_QUEUES.sft, null, {
      connection: h.connection,
      prefix: h.redis.prefix,
      lockDuration: 500,
    });
    const taken = await doomed.getNextJob("doomed-token");
    expect(taken?.id).toBe(stageId);
    await doomed.close();

    const w = await startWorker(
      h.config,
      { db: h.tdb.db, connection: h.connection, logger: quiet },
      { ...FAST_TIMING, maxStalledCount: 0 },
    );
    try {
      const stage = await waitForStage(h, stageId, "failed");
      expect(stage.error).toBe(
        "its worker stopped responding more often than allowed (job stalled more than allowable limit)",
      );
      expect((await getRun(h.tdb.db.prisma, runId))?.status).toBe("failed");
    } finally {
      await w.close();
    }
  });
});

describe("one accelerator per worker process", () => {
  it("runs one stage at a time even when it serves several queues", async () => {
    await withWorker(async () => {
      const sft = await h.submitRun({ sft: { max_steps: 20 } });
      await waitForStep(sft.stageId, 1);
      // Taken by the reward queue's worker at once, but it must wait for the device.
      const reward = await h.submitRun({ kinds: ["reward"] });
      await jobIn("sft", sft.stageId, "completed");
      await jobIn("reward", reward.stageId, "failed");
      const sftStage = (await getStage(h.tdb.db.prisma, sft.stageId))!;
      const rewardStage = (await getStage(h.tdb.db.prisma, reward.stageId))!;
      expect(rewardStage.finishedAt!.getTime()).toBeGreaterThanOrEqual(
        sftStage.finishedAt!.getTime(),
      );
    });
  });
});

describe("stage kinds a worker has no processor for", () => {
  it("fails such a job with a message naming the kinds it trains", async () => {
    // A worker built with a table of sft only (an older worker image, say).
    await withWorker(
      async () => {
        const { runId, stageId } = await h.submitRun({ kinds: ["reward"] });
        const message =
          'stage kind "reward" is not implemented by this worker yet (implemented: sft)';
        const job = await jobIn("reward", stageId, "failed");
        expect(job.failedReason).toBe(message);
        expect(job.attemptsMade).toBe(1);
        const stage = (await getStage(h.tdb.db.prisma, stageId))!;
        expect(stage.status).toBe("failed");
        expect(stage.error).toBe(message);
        expect((await getRun(h.tdb.db.prisma, runId))?.status).toBe("failed");
        expect(await eventMessages(runId)).toContain(`reward stage failed: ${message}`);
      },
      { sft: sftProcessor },
    );
  });
});

describe("the worker's entry point", () => {
  it("refuses a bad setting with one line naming the variable, and exits 1", async () => {
    const child = spawnWorkerProcess(h, {
      env: { CHATRL_WORKER_LOCK_MS: "soon" },
      captureStderr: true,
    });
    let stderr = "";
    child.stderr?.on("data", (chunk) => {
      stderr += chunk;
    });
    const exit = await exited(child);
    expect(exit.code).toBe(1);
    expect(stderr).toContain("CHATRL_WORKER_LOCK_MS must be a number");
    expect(stderr).not.toMatch(/\n\s+at /); // no stack trace
  });
});

describe("worker options", () => {
  it("reads lock timing from the environment and names a bad variable", () => {
    expect(
      loadWorkerOptions({ CHATRL_WORKER_LOCK_MS: "2000", CHATRL_WORKER_MAX_STALLED: "5" }),
    ).toEqual({
      lockDurationMs: 2000,
      stalledIntervalMs: 30_000,
      maxStalledCount: 5,
      requireNativeKernels: false,
    });
    expect(() => loadWorkerOptions({ CHATRL_WORKER_STALLED_INTERVAL_MS: "soon" })).toThrow(
      /CHATRL_WORKER_STALLED_INTERVAL_MS must be a number/,
    );
  });

  it("requires the native kernels only when CHATRL_REQUIRE_NATIVE_KERNELS says so", () => {
    const required = (value: string) =>
      loadWorkerOptions({ CHATRL_REQUIRE_NATIVE_KERNELS: value }).requireNativeKernels;
    expect([required("1"), required("true"), required("0"), required("false")]).toEqual([
      true,
      true,
      false,
      false,
    ]);
    expect(required("")).toBe(false);
    expect(() => required("yes")).toThrow(/CHATRL_REQUIRE_NATIVE_KERNELS must be 1, 0, true/);
  });
});

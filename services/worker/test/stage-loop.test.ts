// The stage loop drives any StageTrainer, not only SFT's: here a two-model trainer (two real
// SFT trainers stepped together, as PPO steps an actor and a critic) registered as the ppo
// processor, with two checkpoint files per step, phases, a metric that only some steps report,
// a summary, and an exact resume of both models and both optimizers after a shutdown.
import { createHash } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { RunSpec } from "@chatrl/contracts";
import { getStage, listCheckpoints, listMetrics, readCheckpointPart } from "@chatrl/db";
import {
  ByteTokenizer,
  GPT,
  loadModel,
  MODEL_PRESETS,
  SFTTrainer,
  type StageTrainer,
  type StepReport,
  saveModel,
  tf,
} from "@chatrl/engine";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSftExamples, sftConfig } from "../src/sft-inputs.ts";
import type { StageProcessor } from "../src/stage-loop.ts";
import { type RunningWorker, startWorker } from "../src/worker.ts";
import {
  createHarness,
  eventMessages,
  FAST_TIMING,
  type Harness,
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

/** Two SFT trainers stepped as one, reporting both losses, two phases and, every third step, their gap. */
class PairTrainer implements StageTrainer {
  constructor(
    private readonly actor: SFTTrainer,
    private readonly twin: SFTTrainer,
    private readonly reports: StepReport[],
  ) {}

  get step(): number {
    return this.actor.step;
  }

  get totalSteps(): number {
    return this.actor.totalSteps;
  }

  async trainStep(): Promise<StepReport> {
    const t0 = performance.now();
    const a = await this.actor.trainStep();
    const t1 = performance.now();
    const b = await this.twin.trainStep();
    const t2 = performance.now();
    const gap: Record<string, number> =
      a.step % 3 === 0 ? { loss_gap: a.metrics.loss - b.metrics.loss } : {};
    const report: StepReport = {
      step: a.step,
      tokens: a.tokens + b.tokens,
      metrics: { actor_loss: a.metrics.loss, twin_loss: b.metrics.loss, ...gap },
      phases: { actor: (t1 - t0) / 1000, twin: (t2 - t1) / 1000 },
    };
    this.reports.push(report);
    return report;
  }

  async exportState(): Promise<Uint8Array> {
    const a = await this.actor.exportState();
    const b = await this.twin.exportState();
    const out = new Uint8Array(4 + a.length + b.length);
    new DataView(out.buffer).setUint32(0, a.length);
    out.set(a, 4);
    out.set(b, 4 + a.length);
    return out;
  }

  async importState(bytes: Uint8Array): Promise<void> {
    const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0);
    await this.actor.importState(bytes.subarray(4, 4 + n));
    await this.twin.importState(bytes.subarray(4 + n));
  }

  dispose(): void {
    this.actor.dispose();
    this.twin.dispose();
  }
}

/** A processor table entry for the ppo kind that trains a PairTrainer on the run's sft rows. */
function pairProcessor(reports: StepReport[]): StageProcessor {
  return {
    async open(ctx, spec, _stage, resume) {
      const examples = await loadSftExamples(ctx.prisma, spec);
      const actor = resume
        ? await loadModel(resume.file("actor"), "actor")
        : new GPT(MODEL_PRESETS.tiny, spec.seed);
      const twin = resume
        ? await loadModel(resume.file("ema"), "ema")
        : new GPT(MODEL_PRESETS.tiny, spec.seed + 1);
      const config = sftConfig(spec);
      const tokenizer = new ByteTokenizer();
      const trainer = new PairTrainer(
        new SFTTrainer(actor, tokenizer, examples, config),
        new SFTTrainer(twin, tokenizer, examples, config),
        reports,
      );
      return {
        trainer,
        checkpointEvery: 5,
        reportEvery: 2,
        describe: () => `pair started: ${trainer.totalSteps} steps`,
        checkpointFiles: async () => [
          { role: "actor", config: actor.config, model: await saveModel(actor, "actor") },
          { role: "ema", config: twin.config, model: await saveModel(twin, "ema") },
        ],
        summary: () => ({ final_actor_loss: reports.at(-1)?.metrics.actor_loss ?? 0 }),
        dispose() {
          trainer.dispose();
          actor.dispose();
          twin.dispose();
        },
      };
    },
  };
}

function startPairWorker(reports: StepReport[]): Promise<RunningWorker> {
  return startWorker(
    { ...h.config, queues: ["ppo"] },
    {
      db: h.tdb.db,
      connection: h.connection,
      logger: quiet,
      processors: { ppo: pairProcessor(reports) },
    },
    FAST_TIMING,
  );
}

const SPEC: Partial<RunSpec["stages"]["sft"]> = { max_steps: 24, checkpoint_every: 5 };

async function finalFiles(runId: string): Promise<Record<string, string>> {
  const finals = (await listCheckpoints(h.tdb.db.prisma, runId)).filter((c) => c.final);
  return Object.fromEntries(finals.map((c) => [c.role, c.sha256]));
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe("the stage loop with a trainer of two models", () => {
  let uninterrupted: { runId: string; files: Record<string, string> };

  it("trains a stage whose processor comes from the table, with two files per checkpoint and its metrics", async () => {
    const reports: StepReport[] = [];
    const progress: Record<string, number>[] = [];
    const tensorsBefore = tf.memory().numTensors;
    const w = await startPairWorker(reports);
    let runId: string;
    try {
      for (const worker of w.workers) {
        worker.on("progress", (_job, p) => progress.push(p as Record<string, number>));
      }
      const run = await h.submitRun({ kinds: ["ppo"], sft: SPEC });
      runId = run.runId;
      const stage = await waitForStage(h, run.stageId, "succeeded");
      expect(stage).toMatchObject({ step: 24, maxSteps: 24, progress: 1 });
      expect(stage.summary).toEqual({ final_actor_loss: reports[23].metrics.actor_loss });
    } finally {
      await w.close();
    }
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(reports.map((r) => r.step)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1));

    // Every fifth step both models and one trainer state; the final set has both models only.
    const checkpoints = await listCheckpoints(h.tdb.db.prisma, runId);
    const bySet = new Map<string, string[]>();
    for (const c of checkpoints) {
      const key = `${c.step}${c.final ? " final" : ""}`;
      bySet.set(key, [...(bySet.get(key) ?? []), c.role].sort());
    }
    expect(Object.fromEntries(bySet)).toEqual({
      "5": ["actor", "ema"],
      "10": ["actor", "ema"],
      "15": ["actor", "ema"],
      "20": ["actor", "ema"],
      "24 final": ["actor", "ema"],
    });
    for (const c of checkpoints) {
      const state = await readCheckpointPart(h.tdb.db.prisma, c.id, "trainer");
      // The trainer state of both models rides on the first file (actor) of a resumable set.
      expect(state !== null, `${c.step} ${c.role}`).toBe(!c.final && c.role === "actor");
      const model = await readCheckpointPart(h.tdb.db.prisma, c.id, "model");
      expect(createHash("sha256").update(model!).digest("hex")).toBe(c.sha256);
    }

    // A report every 2 steps: each metric the mean of the steps in its window that reported it.
    const metric = async (name: string) =>
      new Map(
        (await listMetrics(h.tdb.db.prisma, runId, { stage: "ppo", name })).map((m) => [
          m.step,
          m.value,
        ]),
      );
    const reportSteps = Array.from({ length: 12 }, (_, i) => 2 * (i + 1));
    const window = (end: number) => reports.slice(end - 2, end);
    const actorLoss = await metric("actor_loss");
    const timeTwin = await metric("time_twin_s");
    const gap = await metric("loss_gap");
    expect([...actorLoss.keys()]).toEqual(reportSteps);
    expect([...(await metric("tokens_per_s")).keys()]).toEqual(reportSteps);
    for (const end of reportSteps) {
      const steps = window(end);
      expect(actorLoss.get(end)).toBeCloseTo(mean(steps.map((r) => r.metrics.actor_loss)), 10);
      expect(timeTwin.get(end)).toBeCloseTo(mean(steps.map((r) => r.phases!.twin)), 10);
      const gaps = steps.flatMap((r) =>
        r.metrics.loss_gap === undefined ? [] : [r.metrics.loss_gap],
      );
      expect(gap.get(end)).toEqual(gaps.length > 0 ? expect.closeTo(mean(gaps), 10) : undefined);
    }
    // Steps 3, 6, 9 ... report the gap: windows ending at 4, 6, 10, 12, 16, 18, 22, 24.
    expect([...gap.keys()]).toEqual([4, 6, 10, 12, 16, 18, 22, 24]);

    // Progress carries the same figures, so a CLI can show them.
    expect(progress.map((p) => p.step)).toEqual(reportSteps);
    expect(progress[1]).toMatchObject({ step: 4, total: 24, actor_loss: actorLoss.get(4) });
    expect(progress[1].loss_gap).toBeCloseTo(gap.get(4)!, 10);

    const finals = checkpoints.filter((c) => c.final);
    const actor = finals.find((c) => c.role === "actor")!;
    const ema = finals.find((c) => c.role === "ema")!;
    const messages = await eventMessages(h, runId);
    expect(messages).toContain("pair started: 24 steps");
    expect(messages.find((m) => m.startsWith("ppo succeeded at step 24: "))).toMatch(
      new RegExp(
        `^ppo succeeded at step 24: checkpoints actor ${actor.id}, ema ${ema.id}, ` +
          "final_actor_loss [0-9.]+, [0-9.]+ device seconds, \\$0\\.0000$",
      ),
    );
    uninterrupted = { runId, files: await finalFiles(runId) };
  });

  it("saves both models on shutdown and a resumed attempt ends with the same weights as an uninterrupted one", async () => {
    expect(uninterrupted).toBeDefined();
    const { runId, stageId } = await h.submitRun({ kinds: ["ppo"], sft: SPEC });
    const first = await startPairWorker([]);
    try {
      await waitUntil(
        async () => ((await getStage(h.tdb.db.prisma, stageId))!.step >= 6 ? true : undefined),
        30_000,
        "step 6",
      );
    } finally {
      await first.close(); // a deploy: the stage checkpoints where it is and goes back to the queue
    }
    const messages = await eventMessages(h, runId);
    const paused = messages.find((m) => m.startsWith("ppo paused at step "));
    const pausedStep = Number(paused?.match(/step (\d+)/)?.[1]);
    expect(pausedStep).toBeGreaterThanOrEqual(6);
    expect(pausedStep).toBeLessThan(24);
    expect(await h.queue("ppo").getJobState(stageId)).toBe("waiting");

    const resumedReports: StepReport[] = [];
    const second = await startPairWorker(resumedReports);
    try {
      await waitForStage(h, stageId, "succeeded");
    } finally {
      await second.close();
    }
    expect(await eventMessages(h, runId)).toContain(`ppo resumed from step ${pausedStep}`);
    expect(resumedReports[0].step).toBe(pausedStep + 1);
    // Both models and both optimizers came back exactly: the same final weights, bit for bit.
    expect(await finalFiles(runId)).toEqual(uninterrupted.files);
    // Steps the first attempt reported are not reported again.
    const steps = (await listMetrics(h.tdb.db.prisma, runId, { name: "tokens_per_s" })).map(
      (m) => m.step,
    );
    expect(steps).toEqual(Array.from({ length: 12 }, (_, i) => 2 * (i + 1)));
  });
});

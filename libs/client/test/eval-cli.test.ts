// `chatrl eval` over HTTP against the platform (api and inference on the test Postgres and
// Redis). The runs' checkpoints are written with the repository calls the worker makes, so the
// test does not wait for training: a run with only an SFT model, and a three-stage run with an
// actor, an EMA copy and the reward and PPO metrics.
import { readFile } from "node:fs/promises";
import { addMetrics, createRun, finishStage, saveCheckpoint, startStage } from "@chatrl/db";
import { GPT, MODEL_PRESETS, saveModel } from "@chatrl/engine";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestPlatform, type TestPlatform } from "../../../test/support/platform.ts";
import { type EvalReport, polite } from "../src/index.ts";
import { cli } from "./cli-io.ts";

let platform: TestPlatform;
let prisma: TestPlatform["database"]["prisma"];
let sftOnly: string;
let threeStages: string;

const chatrl = (...argv: string[]) =>
  cli(["--api-url", platform.apiUrl, "--inference-url", platform.inferenceUrl, ...argv]);

async function policyFile(seed: number): Promise<Uint8Array> {
  const model = new GPT(MODEL_PRESETS.tiny, seed);
  try {
    return await saveModel(model);
  } finally {
    model.dispose();
  }
}

/** A run whose stages succeeded, each leaving the final checkpoints and metrics given. */
async function finishedRun(
  stages: {
    kind: "sft" | "reward" | "ppo";
    roles: ("sft" | "actor" | "ema")[];
    metrics?: Record<string, number>;
  }[],
): Promise<string> {
  const run = await createRun(prisma, {
    name: "eval",
    spec: {},
    stages: stages.map((s) => ({ kind: s.kind, maxSteps: 2 })),
  });
  for (const [i, stage] of run.stages.entries()) {
    await startStage(prisma, stage.id, "cpu");
    if (stages[i].metrics) await addMetrics(prisma, stage.id, 2, stages[i].metrics);
    for (const [j, role] of stages[i].roles.entries()) {
      await saveCheckpoint(prisma, {
        runId: run.id,
        stageId: stage.id,
        step: 2,
        role,
        final: true,
        config: MODEL_PRESETS.tiny,
        model: await policyFile(10 * i + j),
      });
    }
    await finishStage(prisma, stage.id, { status: "succeeded" });
  }
  return run.id;
}

beforeAll(async () => {
  platform = await startTestPlatform();
  prisma = platform.database.prisma;
  sftOnly = await finishedRun([{ kind: "sft", roles: ["sft"] }]);
  threeStages = await finishedRun([
    { kind: "sft", roles: ["sft"] },
    { kind: "reward", roles: [], metrics: { loss: 0.4, eval_accuracy: 0.9375 } },
    { kind: "ppo", roles: ["actor", "ema"], metrics: { reward_score: 1.25, kl: 0.0421 } },
  ]);
});

afterAll(async () => {
  await platform?.stop();
});

function expectMean(value: number | undefined, answers: number) {
  expect(value).toBeGreaterThanOrEqual(0);
  expect(value).toBeLessThanOrEqual(1);
  // A mean over `answers` 0/1 values: a whole number of 1/answers.
  const count = (value ?? 0) * answers;
  expect(Math.abs(count - Math.round(count))).toBeLessThan(1e-2);
}

describe("chatrl eval", () => {
  it("scores the SFT model of a run without PPO and reports no actor", async () => {
    const result = await chatrl("eval", "--run", sftOnly, "--samples", "1", "--seed", "5");
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const report = JSON.parse(result.stdout) as EvalReport;
    expect(report).toEqual({
      run: sftOnly,
      task: "polite",
      prompts: polite.HELD_OUT_PROMPTS.length,
      samples_per_prompt: 1,
      seed: 5,
      sft: { model: `run-${sftOnly}-sft`, score: expect.any(Number), correct: expect.any(Number) },
      actor: null,
      ema: null,
      reward_accuracy: null,
      final_kl: null,
      actor_beats_sft: false,
    });
    expectMean(report.sft?.score, 40);
    expectMean(report.sft?.correct, 40);
  });

  it("scores the actor and its EMA copy of a three-stage run, with the reward accuracy and the final KL", async () => {
    const result = await chatrl("eval", "--run", threeStages, "--samples", "2");
    expect(result.stderr).toBe("");
    const report = JSON.parse(result.stdout) as EvalReport;
    expect(report).toMatchObject({
      samples_per_prompt: 2,
      seed: 1,
      sft: { model: `run-${threeStages}-sft` },
      actor: { model: `run-${threeStages}` },
      ema: { model: `run-${threeStages}-ema` },
      reward_accuracy: 0.9375,
      final_kl: 0.0421,
    });
    for (const part of [report.sft, report.actor, report.ema]) expectMean(part?.score, 80);
    expect(report.actor_beats_sft).toBe((report.actor?.score ?? 0) > (report.sft?.score ?? 0));

    // The same seed gives the same report: every answer is sampled from its own seed.
    const again = await chatrl("eval", "--run", threeStages, "--samples", "2");
    expect(JSON.parse(again.stdout)).toEqual(report);
  });

  it("is what `npm run eval` runs, and names an unknown task", async () => {
    const pkg = JSON.parse(
      await readFile(new URL("../../../package.json", import.meta.url), "utf8"),
    );
    expect(pkg.scripts.eval).toBe("tsx libs/client/src/cli.ts eval");
    const result = await chatrl("eval", "--run", sftOnly, "--task", "poetry");
    expect(result.code).toBe(1);
    expect(result.stderr).toBe("error: unknown task poetry (known: polite)\n");
  });

  it("names a run that does not exist, and one with nothing served yet", async () => {
    const missing = await chatrl("eval", "--run", "run_000000000000000000000000");
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error: 404 .*run_000000000000000000000000/);

    const queued = await createRun(prisma, {
      name: "queued",
      spec: {},
      stages: [{ kind: "sft", maxSteps: 2 }],
    });
    const result = await chatrl("eval", "--run", queued.id);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      `error: run ${queued.id} (queued) has no served model yet: its final SFT or PPO checkpoint is served once written\n`,
    );
  });
});

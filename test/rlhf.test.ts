// The whole RLHF pipeline over HTTP, on the real Postgres and Redis: the polite-arithmetic
// example (examples/polite-*) through SFT and the reward model, then PPO, then the eval command.
// The proof that it learns: the reward model ranks held-out pairs, the reward score rises during
// PPO, and the PPO actor answers held-out prompts in the preferred style more often than its
// SFT model does.
import { createChatrlClient, evaluateRun } from "@chatrl/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  readExample,
  startTestPlatform,
  type TestPlatform,
  waitForRun,
} from "./support/platform.ts";

let platform: TestPlatform;

beforeAll(async () => {
  platform = await startTestPlatform();
});

afterAll(async () => {
  await platform?.stop();
});

describe("a three-stage RLHF run of the polite arithmetic example", () => {
  it("trains SFT and a reward model, then a PPO actor that beats its SFT model on the task's scorer", async () => {
    const api = createChatrlClient({ baseUrl: platform.apiUrl });
    const inference = createChatrlClient({ baseUrl: platform.inferenceUrl });
    const sftData = await api.uploadDataset("polite-sft", await readExample("polite-sft.jsonl"));
    const pairs = await api.uploadDataset(
      "polite-preferences",
      await readExample("polite-preferences.jsonl"),
    );
    const spec = JSON.parse(await readExample("polite-rlhf.json"));
    spec.datasets[0].id = sftData.id;
    spec.datasets[1].id = pairs.id;

    const created = await api.createRun(spec);
    expect(created.stages.map((s) => s.kind)).toEqual(["sft", "reward", "ppo"]);
    const run = await waitForRun(api, created.id);
    expect(run.status, run.error ?? "").toBe("succeeded");
    expect(run.fine_tuned_model).toBe(`run-${run.id}`);

    // The reward model ranks held-out pairs far above chance.
    const reward = run.stages.find((s) => s.kind === "reward");
    expect(reward?.summary.accuracy).toBeGreaterThanOrEqual(0.9);
    expect(reward?.summary.chosen_score).toBeGreaterThan(reward?.summary.rejected_score ?? 0);

    // PPO logged every step, and the reward score rose.
    const ppo = run.stages.find((s) => s.kind === "ppo");
    expect(ppo?.step).toBe(spec.stages.ppo.max_steps);
    const metrics = (await api.listRunMetrics(run.id, { stage: "ppo" })).data;
    const series = (name: string) => metrics.filter((m) => m.name === name).map((m) => m.value);
    for (const name of [
      "kl",
      "actor_loss",
      "critic_loss",
      "clip_frac",
      "answer_len",
      "entropy",
      "actor_lr",
      "critic_lr",
      "time_generation_s",
      "time_scoring_s",
      "time_training_s",
    ]) {
      expect(series(name), name).toHaveLength(spec.stages.ppo.max_steps);
    }
    const scores = series("reward_score");
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(scores.slice(-10))).toBeGreaterThan(mean(scores.slice(0, 10)) + 1);

    // Actor, critic and EMA are saved together at the end; only actor and EMA are served.
    const finals = (await api.listRunCheckpoints(run.id)).data.filter(
      (c) => c.final && c.stage_id === ppo?.id,
    );
    expect(finals.map((c) => c.role).sort()).toEqual(["actor", "critic", "ema"]);
    const models = (await inference.listModels()).data.map((m) => m.id).sort();
    expect(models).toEqual([`run-${run.id}`, `run-${run.id}-ema`, `run-${run.id}-sft`]);

    // The proof: on prompts no stage trained on, the actor is kind more often than SFT.
    const report = await evaluateRun({ api, inference, runId: run.id, samples: 2 });
    expect(report.sft?.score).toBeGreaterThan(0.2); // SFT learned both styles
    expect(report.actor?.score).toBeGreaterThan((report.sft?.score ?? 1) + 0.15);
    expect(report.actor_beats_sft).toBe(true);
    expect(report.reward_accuracy).toBe(reward?.summary.accuracy);
  });
});

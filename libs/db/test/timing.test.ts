import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import {
  addMetrics,
  costSummary,
  createRun,
  finishStage,
  listRuns,
  recordStageProgress,
  stageTimings,
  startStage,
  timeSummary,
} from "../src/index.ts";

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => t?.drop());

const at = (iso: string) => new Date(iso);

/** Sets a run's and its stages' timestamps, as if it had run at those times. */
async function backdate(
  runId: string,
  created: string,
  stages: Record<string, { started?: string; finished?: string }>,
) {
  const p = t.db.prisma;
  await p.run.update({ where: { id: runId }, data: { createdAt: at(created) } });
  for (const [kind, times] of Object.entries(stages)) {
    await p.stage.updateMany({
      where: { runId, kind: kind as "sft" },
      data: {
        startedAt: times.started ? at(times.started) : null,
        finishedAt: times.finished ? at(times.finished) : null,
      },
    });
  }
}

/**
 * A three-stage run created at 10:00: SFT waits 5 s, reward 20 s (one worker busy); SFT ends at
 * 10:10, reward at 10:12, PPO starts at 10:12:30, so it waited 30 s after its last parent.
 */
async function threeStageRun(day: string, name: string) {
  const p = t.db.prisma;
  const run = await createRun(p, {
    name,
    spec: { name },
    stages: [
      { kind: "sft", maxSteps: 4 },
      { kind: "reward", maxSteps: 4 },
      { kind: "ppo", maxSteps: 5 },
    ],
  });
  const [sft, reward, ppo] = run.stages;
  for (const stage of run.stages) {
    await startStage(p, stage.id, "cpu");
  }
  await recordStageProgress(p, sft.id, {
    step: 4,
    progress: 1,
    wallSeconds: 590,
    deviceSeconds: 500,
    tokens: 1000,
    costUsd: 0.1,
  });
  await recordStageProgress(p, reward.id, {
    step: 4,
    progress: 1,
    wallSeconds: 700,
    deviceSeconds: 400,
    tokens: 2000,
    costUsd: 0.2,
  });
  await recordStageProgress(p, ppo.id, {
    step: 5,
    progress: 1,
    wallSeconds: 100,
    deviceSeconds: 80,
    tokens: 800,
    costUsd: 0.05,
  });
  // Steps 1, 2, 3 reported one at a time, then one report averaging steps 4 and 5.
  const perStep = [
    { step: 1, generation: 2, scoring: 1, training: 4 },
    { step: 2, generation: 3, scoring: 1, training: 4 },
    { step: 3, generation: 2, scoring: 2, training: 5 },
    { step: 5, generation: 2.5, scoring: 0.5, training: 6 },
  ];
  for (const s of perStep) {
    await addMetrics(p, ppo.id, s.step, {
      reward_score: 0.5,
      time_generation_s: s.generation,
      time_scoring_s: s.scoring,
      time_training_s: s.training,
    });
  }
  for (const stage of run.stages) {
    await finishStage(p, stage.id, { status: "succeeded" });
  }
  await backdate(run.id, `${day}T10:00:00Z`, {
    sft: { started: `${day}T10:00:05Z`, finished: `${day}T10:10:00Z` },
    reward: { started: `${day}T10:00:20Z`, finished: `${day}T10:12:00Z` },
    ppo: { started: `${day}T10:12:30Z`, finished: `${day}T10:14:10Z` },
  });
  return run;
}

describe("time metrics", () => {
  it("gives each stage its queue wait, counting a PPO stage's from its last parent's end", async () => {
    const run = await threeStageRun("2031-03-04", "timed");
    const timings = await stageTimings(t.db.prisma, run.id);
    expect(timings.map((s) => [s.kind, s.queueWaitSeconds])).toEqual([
      ["sft", 5],
      ["reward", 20],
      ["ppo", 30],
    ]);
    const ppo = timings[2];
    expect(ppo.readyAt).toEqual(at("2031-03-04T10:12:00Z"));
    expect(ppo.tokensPerSecond).toBe(10); // 800 tokens / 80 device seconds
    // Per-step seconds times the steps each report covers: 2+3+2+2x2.5, 1+1+2+2x0.5, 4+4+5+2x6.
    expect(ppo.phaseSeconds).toEqual({ generation: 12, scoring: 5, training: 25 });
    expect(timings[0].phaseSeconds).toEqual({});
    expect(timings[0]).toMatchObject({ wallSeconds: 590, deviceSeconds: 500, tokens: 1000 });
  });

  it("leaves the queue wait of a stage that has not started null", async () => {
    const p = t.db.prisma;
    const run = await createRun(p, {
      name: "waiting",
      spec: {},
      stages: [{ kind: "sft", maxSteps: 3 }],
    });
    const [sft] = await stageTimings(p, run.id);
    expect(sft.queueWaitSeconds).toBeNull();
    expect(sft.readyAt).toEqual(run.createdAt);
    expect(await stageTimings(p, "run_unknown")).toEqual([]);
  });

  it("sums time per run, per stage kind and per day, within a day range", async () => {
    const p = t.db.prisma;
    const first = await threeStageRun("2031-05-01", "may-1");
    const second = await threeStageRun("2031-05-02", "may-2");
    const range = { from: "2031-05-01", to: "2031-05-02" };

    const byDay = await timeSummary(p, "day", range);
    expect(byDay.map((r) => r.key)).toEqual(["2031-05-01", "2031-05-02"]);
    expect(byDay[0]).toEqual({
      key: "2031-05-01",
      runs: 1,
      stages: 3,
      queueWaitSeconds: 55,
      wallSeconds: 1390,
      deviceSeconds: 980,
      tokens: 3800,
      tokensPerSecond: 3800 / 980,
      costUsd: expect.closeTo(0.35, 10),
      phaseSeconds: { generation: 12, scoring: 5, training: 25 },
    });

    const byRun = await timeSummary(p, "run", range);
    expect(byRun.map((r) => r.key)).toEqual([second.id, first.id]);

    const byStage = await timeSummary(p, "stage", range);
    expect(byStage.map((r) => [r.key, r.stages, r.queueWaitSeconds])).toEqual([
      ["sft", 2, 10],
      ["reward", 2, 40],
      ["ppo", 2, 60],
    ]);
    expect(byStage[2].phaseSeconds).toEqual({ generation: 24, scoring: 10, training: 50 });

    const oneRun = await timeSummary(p, "stage", { runId: first.id });
    expect(oneRun.map((r) => r.stages)).toEqual([1, 1, 1]);
    expect(await timeSummary(p, "day", { from: "2031-05-02", to: "2031-05-02" })).toHaveLength(1);
    await expect(timeSummary(p, "day", { from: "May 1" })).rejects.toThrow(/from must be a day/);
  });

  it("limits cost sums to the days a range names, both ends included", async () => {
    const p = t.db.prisma;
    await threeStageRun("2031-07-01", "jul-1");
    await threeStageRun("2031-07-03", "jul-3");
    const days = await costSummary(p, "day", { from: "2031-07-01", to: "2031-07-02" });
    expect(days.map((r) => [r.key, r.stages])).toEqual([["2031-07-01", 3]]);
    const after = await costSummary(p, "day", { from: "2031-07-02" });
    expect(after.map((r) => r.key)).toEqual(["2031-07-03"]);
  });

  it("lists runs in one status only when asked", async () => {
    const p = t.db.prisma;
    const queued = await listRuns(p, { limit: 100, status: "queued" });
    expect(queued.data.map((r) => r.name)).toEqual(["waiting"]);
    const succeeded = await listRuns(p, { limit: 2, status: "succeeded" });
    expect(succeeded.data.every((r) => r.status === "succeeded")).toBe(true);
    expect(succeeded.hasMore).toBe(true);
  });
});

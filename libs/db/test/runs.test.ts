import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import {
  cancelRun,
  costSummary,
  createRun,
  createRuns,
  failUnqueuedRun,
  findRunByIdempotencyKey,
  finishStage,
  getRun,
  getStage,
  getStageByRunAndKind,
  listRuns,
  markRunFailed,
  recordStageData,
  recordStageProgress,
  startStage,
} from "../src/index.ts";

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => t?.drop());

const fullPipeline = [
  { kind: "ppo", maxSteps: 30 },
  { kind: "sft", maxSteps: 10 },
  { kind: "reward", maxSteps: 20 },
] as const;

function newRun(name: string, idempotencyKey?: string) {
  return createRun(t.db.prisma, {
    name,
    spec: { name, seed: 42 },
    idempotencyKey,
    stages: fullPipeline.map((s) => ({ ...s })),
  });
}

describe("runs", () => {
  it("creates a queued run with queued stages in pipeline order", async () => {
    const run = await newRun("first");
    expect(run.id).toMatch(/^run_[0-9a-f]{24}$/);
    expect(run).toMatchObject({
      name: "first",
      status: "queued",
      spec: { name: "first", seed: 42 },
    });
    expect(run.stages.map((s) => [s.kind, s.status, s.maxSteps, s.tokens])).toEqual([
      ["sft", "queued", 10, 0],
      ["reward", "queued", 20, 0],
      ["ppo", "queued", 30, 0],
    ]);
    expect(run.stages.every((s) => /^stage_[0-9a-f]{24}$/.test(s.id))).toBe(true);
    expect(run.warnings).toEqual([]);
    expect(run.stages[0]).toMatchObject({ examplesTruncated: 0, examplesDropped: 0, summary: {} });
    expect(await getRun(t.db.prisma, run.id)).toEqual(run);
    expect(await getRun(t.db.prisma, "run_000000000000000000000000")).toBeNull();
  });

  it("stores the warnings given at submission with the run", async () => {
    const warnings = ["dataset ds_x has examples of up to 300 tokens", "another"];
    const run = await createRun(t.db.prisma, {
      name: "warned",
      spec: {},
      warnings,
      stages: [{ kind: "sft", maxSteps: 1 }],
    });
    expect(run.warnings).toEqual(warnings);
    expect((await getRun(t.db.prisma, run.id))?.warnings).toEqual(warnings);
  });

  it("finds a run by its idempotency key and never stores a second one under the same key", async () => {
    const run = await newRun("idem", "key-1");
    expect((await findRunByIdempotencyKey(t.db.prisma, "key-1"))?.id).toBe(run.id);
    expect(await findRunByIdempotencyKey(t.db.prisma, "key-unknown")).toBeNull();
    const again = await newRun("idem retry", "key-1");
    expect(again.id).toBe(run.id);
    expect(await t.db.prisma.run.count({ where: { idempotencyKey: "key-1" } })).toBe(1);
  });

  it("lists runs newest first, a page at a time, without gaps or repeats", async () => {
    for (const name of ["a", "b", "c"]) {
      await newRun(`page-${name}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    const first = await listRuns(t.db.prisma, { limit: 2 });
    expect(first.data.map((r) => r.name)).toEqual(["page-c", "page-b"]);
    expect(first.hasMore).toBe(true);
    expect(first.data[0].stages).toHaveLength(3);
    const second = await listRuns(t.db.prisma, { after: first.data[1].id, limit: 2 });
    expect(second.data.map((r) => r.name)).toEqual(["page-a", "idem"]);
    const total = await t.db.prisma.run.count();
    const all = await listRuns(t.db.prisma, { limit: total });
    expect(all.hasMore).toBe(false);
    expect(all.data).toHaveLength(total);
  });

  it("pages through runs created in the same millisecond, and through one status only, without gaps or repeats", async () => {
    // A group commit writes many runs at once: equal created_at, ordered by id among themselves.
    const same = [];
    for (let i = 0; i < 5; i++) same.push(await newRun(`tie-${i}`));
    await t.db.prisma.run.updateMany({
      where: { id: { in: same.map((r) => r.id) } },
      data: { createdAt: new Date("2099-01-01T00:00:00.000Z") },
    });
    await t.db.prisma.run.updateMany({
      where: { id: { in: [same[1].id, same[3].id] } },
      data: { status: "failed" },
    });
    const walk = async (status?: "failed") => {
      const seen: string[] = [];
      let after: string | undefined;
      for (;;) {
        const page = await listRuns(t.db.prisma, { after, limit: 2, status });
        seen.push(...page.data.map((r) => r.id));
        if (!page.hasMore) return seen;
        after = page.data.at(-1)?.id;
      }
    };
    const newestFirst = (ids: string[]) => [...ids].sort().reverse();
    const everyRun = await walk();
    expect(everyRun.slice(0, 5)).toEqual(newestFirst(same.map((r) => r.id)));
    expect(new Set(everyRun).size).toBe(everyRun.length);
    expect(everyRun).toHaveLength(await t.db.prisma.run.count());
    const failed = await walk("failed");
    expect(failed.slice(0, 2)).toEqual(newestFirst([same[1].id, same[3].id]));
    expect(failed).toHaveLength(await t.db.prisma.run.count({ where: { status: "failed" } }));
    const page = await listRuns(t.db.prisma, { limit: 1, status: "failed" });
    expect(page.data[0]).toMatchObject({ status: "failed", name: expect.stringMatching(/^tie-/) });
    expect(page.data[0].stages).toHaveLength(3);
    expect(page.data[0].createdAt).toEqual(new Date("2099-01-01T00:00:00.000Z"));
  });
});

describe("stages and run status", () => {
  it("starting a stage marks it and its run running", async () => {
    const run = await newRun("start");
    const sft = run.stages[0];
    const started = await startStage(t.db.prisma, sft.id, "cpu:2");
    expect(started).toMatchObject({ status: "running", device: "cpu:2" });
    expect(started.startedAt).toBeInstanceOf(Date);
    const after = await getRun(t.db.prisma, run.id);
    expect(after?.status).toBe("running");
    expect(after?.startedAt).toBeInstanceOf(Date);
    // A resumed job keeps the first start time.
    const again = await startStage(t.db.prisma, sft.id, "cpu:2");
    expect(again.startedAt).toEqual(started.startedAt);
  });

  it("records progress numbers, tokens as a number", async () => {
    const run = await newRun("progress");
    const sft = run.stages[0];
    await startStage(t.db.prisma, sft.id, "cpu");
    const stage = await recordStageProgress(t.db.prisma, sft.id, {
      step: 5,
      progress: 0.5,
      wallSeconds: 12.5,
      deviceSeconds: 10,
      tokens: 40_960,
      costUsd: 0.002,
    });
    expect(stage).toMatchObject({
      step: 5,
      progress: 0.5,
      wallSeconds: 12.5,
      deviceSeconds: 10,
      tokens: 40_960,
      costUsd: 0.002,
    });
    expect(await getStage(t.db.prisma, sft.id)).toEqual(stage);
  });

  it("a run succeeds when all its stages have succeeded, and not before", async () => {
    const run = await newRun("success");
    const [sft, reward, ppo] = run.stages;
    for (const s of [sft, reward]) await startStage(t.db.prisma, s.id, "cpu");
    let result = await finishStage(t.db.prisma, sft.id, { status: "succeeded" });
    expect(result.stage).toMatchObject({ status: "succeeded", error: null });
    expect(result.stage.finishedAt).toBeInstanceOf(Date);
    expect(result.run).toMatchObject({ status: "running", finishedAt: null });
    result = await finishStage(t.db.prisma, reward.id, { status: "succeeded" });
    expect(result.run.status).toBe("running");
    await startStage(t.db.prisma, ppo.id, "cpu");
    result = await finishStage(t.db.prisma, ppo.id, { status: "succeeded" });
    expect(result.run.status).toBe("succeeded");
    expect(result.run.finishedAt).toBeInstanceOf(Date);
    expect(result.run.stages.map((s) => s.status)).toEqual(["succeeded", "succeeded", "succeeded"]);
  });

  it("a failed stage fails the run and stops its other stages, running or waiting", async () => {
    const run = await newRun("one fails");
    const [sft, reward, ppo] = run.stages;
    for (const s of [sft, reward]) await startStage(t.db.prisma, s.id, "cpu");
    const { run: after } = await finishStage(t.db.prisma, sft.id, {
      status: "failed",
      error: "out of memory",
    });
    expect(after).toMatchObject({ status: "failed", error: "sft stage failed: out of memory" });
    expect(after.stages.map((s) => [s.kind, s.status, s.error])).toEqual([
      ["sft", "failed", "out of memory"],
      ["reward", "cancelled", "not finished: the sft stage failed"],
      ["ppo", "cancelled", "not finished: the sft stage failed"],
    ]);
    expect(after.stages.every((s) => s.finishedAt instanceof Date)).toBe(true);
    // The reward worker sees its stage cancelled at its next step and stops.
    expect((await getStage(t.db.prisma, reward.id))?.status).toBe("cancelled");
    expect(ppo.status).toBe("queued");
  });

  it("writes the reason a stage failed with the failure: whoever sees one sees the other", async () => {
    const run = await newRun("failure event");
    const [sft] = run.stages;
    await startStage(t.db.prisma, sft.id, "cpu");
    const event = { level: "error" as const, message: "sft stage failed: the loss is NaN" };
    const finishing = finishStage(t.db.prisma, sft.id, {
      status: "failed",
      error: "the loss is NaN",
    });
    // Polled while the transaction runs: once the stage reads failed, its event is there too.
    for (;;) {
      if ((await getStage(t.db.prisma, sft.id))?.status !== "failed") continue;
      const events = await t.db.prisma.runEvent.findMany({
        where: { runId: run.id, level: "error" },
      });
      expect(events.map((e) => e.message)).toEqual([event.message]);
      break;
    }
    await finishing;
    const logged = await t.db.prisma.runEvent.findMany({
      where: { runId: run.id, level: "error" },
    });
    expect(logged.map((e) => e.message)).toEqual([event.message]);
  });

  it("finds a run's stage by kind, and null for a kind the run does not train", async () => {
    const run = await createRun(t.db.prisma, {
      name: "by-kind",
      spec: {},
      stages: [{ kind: "reward", maxSteps: 5 }],
    });
    expect(await getStageByRunAndKind(t.db.prisma, run.id, "reward")).toEqual(run.stages[0]);
    expect(await getStageByRunAndKind(t.db.prisma, run.id, "sft")).toBeNull();
  });

  it("records the examples a stage cut and dropped, and refuses counts that are not counts", async () => {
    const run = await newRun("data");
    const sft = run.stages[0];
    const stage = await recordStageData(t.db.prisma, sft.id, {
      examplesTruncated: 12,
      examplesDropped: 3,
    });
    expect(stage).toMatchObject({ examplesTruncated: 12, examplesDropped: 3 });
    expect(await getStage(t.db.prisma, sft.id)).toEqual(stage);
    await expect(
      recordStageData(t.db.prisma, sft.id, { examplesTruncated: -1, examplesDropped: 0 }),
    ).rejects.toThrow(/examplesTruncated must be a non-negative integer/);
    expect((await getStage(t.db.prisma, sft.id))?.examplesTruncated).toBe(12);
  });

  it("stores a finished stage's summary and keeps it when a later finish gives none", async () => {
    const run = await newRun("summary");
    const reward = run.stages[1];
    await startStage(t.db.prisma, reward.id, "cpu");
    await expect(
      finishStage(t.db.prisma, reward.id, {
        status: "succeeded",
        summary: { accuracy: Number.NaN },
      }),
    ).rejects.toThrow(/summary accuracy must be a finite number/);
    expect((await getStage(t.db.prisma, reward.id))?.status).toBe("running");
    const summary = { accuracy: 0.8125, chosen_score: 1.25, rejected_score: -0.75 };
    const { stage, run: after } = await finishStage(t.db.prisma, reward.id, {
      status: "succeeded",
      summary,
    });
    expect(stage.summary).toEqual(summary);
    expect(after.stages[1].summary).toEqual(summary);
    expect((await getStage(t.db.prisma, reward.id))?.summary).toEqual(summary);
    await finishStage(t.db.prisma, reward.id, { status: "succeeded" });
    expect((await getStage(t.db.prisma, reward.id))?.summary).toEqual(summary);
  });

  it("a run fails when any stage fails, with the stage's error", async () => {
    const run = await newRun("failure");
    const [sft, reward] = run.stages;
    await startStage(t.db.prisma, sft.id, "cpu");
    await startStage(t.db.prisma, reward.id, "cpu");
    await finishStage(t.db.prisma, sft.id, { status: "succeeded" });
    const { run: failed } = await finishStage(t.db.prisma, reward.id, {
      status: "failed",
      error: "loss is NaN",
    });
    expect(failed.status).toBe("failed");
    expect(failed.error).toBe("reward stage failed: loss is NaN");
    expect(failed.finishedAt).toBeInstanceOf(Date);
  });

  it("finishing two stages of one run at the same time derives the run status once, correctly", async () => {
    const run = await createRun(t.db.prisma, {
      name: "race",
      spec: {},
      stages: [
        { kind: "sft", maxSteps: 1 },
        { kind: "reward", maxSteps: 1 },
      ],
    });
    for (const s of run.stages) await startStage(t.db.prisma, s.id, "cpu");
    await Promise.all(
      run.stages.map((s) => finishStage(t.db.prisma, s.id, { status: "succeeded" })),
    );
    expect((await getRun(t.db.prisma, run.id))?.status).toBe("succeeded");
  });

  it("cancelling a run cancels its unfinished stages, and a cancelled stage does not start", async () => {
    const run = await newRun("cancel");
    const [sft, reward, ppo] = run.stages;
    await startStage(t.db.prisma, sft.id, "cpu");
    await finishStage(t.db.prisma, sft.id, { status: "succeeded" });
    await startStage(t.db.prisma, reward.id, "cpu");
    const cancelled = await cancelRun(t.db.prisma, run.id);
    expect(cancelled?.status).toBe("cancelled");
    expect(cancelled?.finishedAt).toBeInstanceOf(Date);
    expect(cancelled?.stages.map((s) => s.status)).toEqual(["succeeded", "cancelled", "cancelled"]);
    expect((await startStage(t.db.prisma, ppo.id, "cpu")).status).toBe("cancelled");
    // The worker noticing the cancel reports it; the run stays cancelled.
    const { run: after } = await finishStage(t.db.prisma, reward.id, { status: "cancelled" });
    expect(after.status).toBe("cancelled");
    // Cancelling a finished run changes nothing.
    const again = await cancelRun(t.db.prisma, run.id);
    expect(again?.finishedAt).toEqual(cancelled?.finishedAt);
    expect(await cancelRun(t.db.prisma, "run_000000000000000000000000")).toBeNull();
  });

  it("a stage failing after its run was cancelled leaves the run cancelled", async () => {
    const run = await newRun("cancel then fail");
    const [sft] = run.stages;
    await startStage(t.db.prisma, sft.id, "cpu");
    await cancelRun(t.db.prisma, run.id);
    const { stage, run: after } = await finishStage(t.db.prisma, sft.id, {
      status: "failed",
      error: "aborted",
    });
    expect(stage.status).toBe("failed");
    expect(after.status).toBe("cancelled");
    expect(after.error).toBeNull();
  });

  it("a cancel racing with a stage start is never overwritten", async () => {
    for (let i = 0; i < 5; i++) {
      const run = await newRun(`race ${i}`);
      const [sft] = run.stages;
      await Promise.all([startStage(t.db.prisma, sft.id, "cpu"), cancelRun(t.db.prisma, run.id)]);
      const after = await getRun(t.db.prisma, run.id);
      expect(after?.status).toBe("cancelled");
      expect(after?.stages.map((s) => s.status)).toEqual(["cancelled", "cancelled", "cancelled"]);
    }
  });

  it("cancelling a finished run leaves it as it was", async () => {
    const run = await createRun(t.db.prisma, {
      name: "done",
      spec: {},
      stages: [{ kind: "sft", maxSteps: 1 }],
    });
    await startStage(t.db.prisma, run.stages[0].id, "cpu");
    await finishStage(t.db.prisma, run.stages[0].id, { status: "succeeded" });
    const after = await cancelRun(t.db.prisma, run.id);
    expect(after?.status).toBe("succeeded");
    expect(after?.stages[0].status).toBe("succeeded");
  });

  it("marks a run that could not be queued as failed, with its stages", async () => {
    const run = await newRun("unqueued");
    const failed = await markRunFailed(t.db.prisma, run.id, "Redis unreachable");
    expect(failed).toMatchObject({ status: "failed", error: "Redis unreachable" });
    expect(failed.finishedAt).toBeInstanceOf(Date);
    expect(failed.stages.map((s) => s.status)).toEqual(["failed", "failed", "failed"]);
  });
});

describe("cost summary", () => {
  it("sums time, tokens and cost by run, by stage kind and by day", async () => {
    // A database of its own: the sums must be exact.
    const own = await createTestDatabase();
    try {
      const p = own.db.prisma;
      const mk = (name: string) =>
        createRun(p, { name, spec: {}, stages: fullPipeline.map((s) => ({ ...s })) });
      const r1 = await mk("r1");
      const r2 = await mk("r2");
      const spend = async (stageId: string, n: number, startedAt: string) => {
        await startStage(p, stageId, "cpu");
        await p.stage.update({ where: { id: stageId }, data: { startedAt: new Date(startedAt) } });
        await recordStageProgress(p, stageId, {
          step: n,
          progress: 1,
          wallSeconds: 10 * n,
          deviceSeconds: 8 * n,
          tokens: 1000 * n,
          costUsd: 0.5 * n,
        });
      };
      await spend(r1.stages[0].id, 1, "2026-03-01T10:00:00Z"); // r1 sft
      await spend(r1.stages[1].id, 2, "2026-03-01T23:30:00Z"); // r1 reward
      await spend(r2.stages[0].id, 4, "2026-03-02T00:15:00Z"); // r2 sft
      // r1 ppo, r2 reward and r2 ppo never started: they count nowhere.

      const byRun = await costSummary(p, "run");
      expect(byRun).toEqual([
        {
          key: r2.id,
          runs: 1,
          stages: 1,
          wallSeconds: 40,
          deviceSeconds: 32,
          tokens: 4000,
          costUsd: 2,
        },
        {
          key: r1.id,
          runs: 1,
          stages: 2,
          wallSeconds: 30,
          deviceSeconds: 24,
          tokens: 3000,
          costUsd: 1.5,
        },
      ]);
      expect(await costSummary(p, "stage")).toEqual([
        {
          key: "sft",
          runs: 2,
          stages: 2,
          wallSeconds: 50,
          deviceSeconds: 40,
          tokens: 5000,
          costUsd: 2.5,
        },
        {
          key: "reward",
          runs: 1,
          stages: 1,
          wallSeconds: 20,
          deviceSeconds: 16,
          tokens: 2000,
          costUsd: 1,
        },
      ]);
      expect(await costSummary(p, "day")).toEqual([
        {
          key: "2026-03-01",
          runs: 1,
          stages: 2,
          wallSeconds: 30,
          deviceSeconds: 24,
          tokens: 3000,
          costUsd: 1.5,
        },
        {
          key: "2026-03-02",
          runs: 1,
          stages: 1,
          wallSeconds: 40,
          deviceSeconds: 32,
          tokens: 4000,
          costUsd: 2,
        },
      ]);
      await expect(costSummary(p, "model" as "run")).rejects.toThrow(/groupBy/);
    } finally {
      await own.drop();
    }
  });
});

describe("runs read and written in one statement", () => {
  it("reads a run exactly as Prisma's query of the run and its stages does", async () => {
    const run = await newRun("every field");
    const [sft, reward] = run.stages;
    await startStage(t.db.prisma, sft.id, "cpu:0");
    await recordStageProgress(t.db.prisma, sft.id, {
      step: 3,
      progress: 0.3,
      wallSeconds: 1.25,
      deviceSeconds: 0.1 + 0.2,
      tokens: 2 ** 40 + 7,
      costUsd: 1e-7,
    });
    await recordStageData(t.db.prisma, sft.id, { examplesTruncated: 2, examplesDropped: 1 });
    await finishStage(t.db.prisma, sft.id, { status: "succeeded", summary: { loss: 0.123456789 } });
    await finishStage(t.db.prisma, reward.id, { status: "failed", error: 'ünïcode "quoted"\n' });
    const prisma = await t.db.prisma.run.findUniqueOrThrow({
      where: { id: run.id },
      include: { stages: { orderBy: { kind: "asc" } } },
    });
    const read = await getRun(t.db.prisma, run.id);
    expect(read).toEqual({
      ...prisma,
      stages: prisma.stages.map((s) => ({ ...s, tokens: Number(s.tokens) })),
    });
    expect(read?.stages[0]).toMatchObject({ tokens: 2 ** 40 + 7, summary: { loss: 0.123456789 } });
    expect(read?.finishedAt).toBeInstanceOf(Date);
  });

  it("writes several runs in one statement, each with its stages and events in order, one run per idempotency key", async () => {
    const stages = [{ kind: "sft" as const, maxSteps: 4 }];
    const events = (name: string) => [
      { level: "info" as const, message: `${name}: first` },
      { level: "warn" as const, message: `${name}: second` },
    ];
    const runs = await createRuns(t.db.prisma, [
      { name: "one", spec: { n: 1 }, stages, events: events("one") },
      { name: "two", spec: { n: 2 }, stages, idempotencyKey: "batch-key", events: events("two") },
      { name: "three", spec: { n: 3 }, stages, idempotencyKey: "batch-key", events: events("3") },
    ]);
    expect(runs.map((r) => r.name)).toEqual(["one", "two", "two"]);
    expect(runs[2]).toEqual(runs[1]);
    for (const run of runs) expect(await getRun(t.db.prisma, run.id)).toEqual(run);
    const logged = await t.db.prisma.runEvent.findMany({
      where: { runId: { in: runs.map((r) => r.id) } },
      orderBy: { id: "asc" },
    });
    expect(logged.map((e) => [e.runId, e.level, e.message])).toEqual([
      [runs[0].id, "info", "one: first"],
      [runs[0].id, "warn", "one: second"],
      [runs[1].id, "info", "two: first"],
      [runs[1].id, "warn", "two: second"],
    ]);
    expect(await createRuns(t.db.prisma, [])).toEqual([]);
  });

  it("fails a run that could not be queued and takes back the event that said it was queued", async () => {
    const run = await createRun(t.db.prisma, {
      name: "unqueued",
      spec: {},
      stages: [{ kind: "sft", maxSteps: 1 }],
      warnings: ["a warning"],
      events: [
        { level: "info", message: "Queued stages: sft" },
        { level: "warn", message: "a warning" },
      ],
    });
    const failed = await failUnqueuedRun(t.db.prisma, run.id, {
      error: "The job queue (Redis) was unavailable",
      retract: "Queued stages: sft",
      event: "Could not queue the run: Redis timed out",
    });
    expect(failed.status).toBe("failed");
    expect(failed.stages.map((s) => s.status)).toEqual(["failed"]);
    const logged = await t.db.prisma.runEvent.findMany({
      where: { runId: run.id },
      orderBy: { id: "asc" },
    });
    expect(logged.map((e) => [e.level, e.message])).toEqual([
      ["warn", "a warning"],
      ["error", "Could not queue the run: Redis timed out"],
    ]);
  });
});

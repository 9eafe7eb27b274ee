import { createHash, randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import {
  addEvent,
  addMetrics,
  CHUNK_BYTES,
  type CheckpointRole,
  checkpointsAtStep,
  createRun,
  getCheckpoint,
  latestCheckpoint,
  latestCheckpointSet,
  listCheckpoints,
  listEvents,
  listMetrics,
  listServableCheckpoints,
  readCheckpointPart,
  type RunWithStages,
  saveCheckpoint,
  saveCheckpoints,
} from "../src/index.ts";

let t: TestDatabase;
let run: RunWithStages;
beforeAll(async () => {
  t = await createTestDatabase();
  run = await createRun(t.db.prisma, {
    name: "ckpt",
    spec: {},
    stages: [
      { kind: "sft", maxSteps: 10 },
      { kind: "reward", maxSteps: 10 },
    ],
  });
});
afterAll(async () => t?.drop());

describe("checkpoints", () => {
  it("stores a model over 4 MiB in chunks and reads back the same bytes and sha256", async () => {
    const model = randomBytes(CHUNK_BYTES * 2 + 12_345); // three chunks, the last one partial
    const trainer = randomBytes(1_000);
    const [sft] = run.stages;
    const ckpt = await saveCheckpoint(t.db.prisma, {
      runId: run.id,
      stageId: sft.id,
      step: 10,
      role: "sft",
      final: true,
      config: { dModel: 32 },
      model,
      trainer,
    });
    expect(ckpt.id).toMatch(/^ckpt_[0-9a-f]{24}$/);
    expect(ckpt.bytes).toBe(model.byteLength);
    expect(ckpt.sha256).toBe(createHash("sha256").update(model).digest("hex"));

    const chunks = await t.db.prisma.checkpointChunk.findMany({
      where: { checkpointId: ckpt.id },
      orderBy: [{ part: "asc" }, { index: "asc" }],
      select: { part: true, index: true, data: true },
    });
    expect(chunks.map((c) => [c.part, c.index, c.data.byteLength])).toEqual([
      ["model", 0, CHUNK_BYTES],
      ["model", 1, CHUNK_BYTES],
      ["model", 2, 12_345],
      ["trainer", 0, 1_000],
    ]);

    const readModel = await readCheckpointPart(t.db.prisma, ckpt.id, "model");
    expect(readModel && Buffer.from(readModel).equals(model)).toBe(true);
    expect(
      createHash("sha256")
        .update(readModel as Uint8Array)
        .digest("hex"),
    ).toBe(ckpt.sha256);
    const readTrainer = await readCheckpointPart(t.db.prisma, ckpt.id, "trainer");
    expect(readTrainer && Buffer.from(readTrainer).equals(trainer)).toBe(true);
    expect(await getCheckpoint(t.db.prisma, ckpt.id)).toEqual(ckpt);
  });

  it("has no trainer part when none was given, and reads nothing for an unknown checkpoint", async () => {
    const [, reward] = run.stages;
    const ckpt = await saveCheckpoint(t.db.prisma, {
      runId: run.id,
      stageId: reward.id,
      step: 1,
      role: "reward",
      final: false,
      config: {},
      model: new Uint8Array([1, 2, 3]),
    });
    expect(await readCheckpointPart(t.db.prisma, ckpt.id, "trainer")).toBeNull();
    expect(Array.from((await readCheckpointPart(t.db.prisma, ckpt.id, "model")) ?? [])).toEqual([
      1, 2, 3,
    ]);
    expect(
      await readCheckpointPart(t.db.prisma, "ckpt_000000000000000000000000", "model"),
    ).toBeNull();
    expect(await getCheckpoint(t.db.prisma, "ckpt_000000000000000000000000")).toBeNull();
  });

  it("stores no chunk when the checkpoint cannot be saved", async () => {
    const before = await t.db.prisma.checkpointChunk.count();
    await expect(
      saveCheckpoint(t.db.prisma, {
        runId: run.id,
        stageId: "stage_000000000000000000000000", // no such stage
        step: 1,
        role: "actor",
        final: false,
        config: {},
        model: randomBytes(100),
      }),
    ).rejects.toThrow();
    expect(await t.db.prisma.checkpointChunk.count()).toBe(before);
  });

  it("finds a stage's latest checkpoint by step, lists a run's, and lists final ones as servable", async () => {
    const [, reward] = run.stages;
    const save = (step: number, final: boolean) =>
      saveCheckpoint(t.db.prisma, {
        runId: run.id,
        stageId: reward.id,
        step,
        role: "reward",
        final,
        config: {},
        model: new Uint8Array([step]),
      });
    await save(5, false);
    const last = await save(10, true);
    expect((await latestCheckpoint(t.db.prisma, reward.id))?.id).toBe(last.id);
    expect(await latestCheckpoint(t.db.prisma, "stage_000000000000000000000000")).toBeNull();

    const all = await listCheckpoints(t.db.prisma, run.id);
    expect(all.map((c) => [c.role, c.step])).toEqual([
      ["sft", 10],
      ["reward", 1],
      ["reward", 5],
      ["reward", 10],
    ]);
    const servable = await listServableCheckpoints(t.db.prisma);
    expect(servable.map((c) => [c.role, c.step, c.run.id, c.stage.kind])).toEqual([
      ["reward", 10, run.id, "reward"],
      ["sft", 10, run.id, "sft"],
    ]);
    expect(servable.every((c) => !("chunks" in c))).toBe(true);
  });
});

describe("checkpoints of several models (PPO: actor, critic, ema)", () => {
  let ppo: RunWithStages["stages"][number];
  beforeAll(async () => {
    const ppoRun = await createRun(t.db.prisma, {
      name: "ppo ckpt",
      spec: {},
      stages: [{ kind: "ppo", maxSteps: 10 }],
    });
    ppo = ppoRun.stages[0];
  });
  const file = (role: CheckpointRole, fill: number) => ({
    role,
    config: { role },
    model: new Uint8Array(100).fill(fill),
  });
  const modelBytes = async (id: string) =>
    Array.from((await readCheckpointPart(t.db.prisma, id, "model")) ?? []);

  it("saves every file of a step with the trainer state on the first, and finds them as the newest set", async () => {
    const trainer = randomBytes(500);
    const rows = await saveCheckpoints(t.db.prisma, {
      runId: ppo.runId,
      stageId: ppo.id,
      step: 4,
      final: false,
      files: [file("actor", 1), file("critic", 2), file("ema", 3)],
      trainer,
    });
    expect(rows.map((r) => [r.role, r.step, r.final, r.bytes])).toEqual([
      ["actor", 4, false, 100],
      ["critic", 4, false, 100],
      ["ema", 4, false, 100],
    ]);
    expect(rows[1].config).toEqual({ role: "critic" });
    expect((await modelBytes(rows[2].id))[0]).toBe(3);
    const states = await Promise.all(
      rows.map((r) => readCheckpointPart(t.db.prisma, r.id, "trainer")),
    );
    expect(states[0] && Buffer.from(states[0]).equals(trainer)).toBe(true);
    expect(states.slice(1)).toEqual([null, null]);

    const set = await latestCheckpointSet(t.db.prisma, ppo.id);
    expect(set?.step).toBe(4);
    expect(set?.final).toBe(false);
    expect(set?.checkpoints.map((c) => c.id)).toEqual(rows.map((r) => r.id));
    expect((await checkpointsAtStep(t.db.prisma, ppo.id, 4)).map((c) => c.id)).toEqual(
      rows.map((r) => r.id),
    );
    expect(await checkpointsAtStep(t.db.prisma, ppo.id, 5)).toEqual([]);
    expect(await latestCheckpointSet(t.db.prisma, "stage_000000000000000000000000")).toBeNull();
  });

  it("stores nothing of a checkpoint when one of its files cannot be stored", async () => {
    const rowsBefore = await t.db.prisma.checkpoint.count();
    const chunksBefore = await t.db.prisma.checkpointChunk.count();
    await expect(
      saveCheckpoints(t.db.prisma, {
        runId: ppo.runId,
        stageId: ppo.id,
        step: 8,
        final: false,
        // The actor and the critic are written before the third file fails.
        files: [file("actor", 4), file("critic", 5), file("value" as CheckpointRole, 6)],
        trainer: randomBytes(500),
      }),
    ).rejects.toThrow();
    expect(await t.db.prisma.checkpoint.count()).toBe(rowsBefore);
    expect(await t.db.prisma.checkpointChunk.count()).toBe(chunksBefore);
    // A resume still finds the last complete checkpoint.
    const set = await latestCheckpointSet(t.db.prisma, ppo.id);
    expect(set?.step).toBe(4);
    expect(set?.checkpoints.map((c) => c.role)).toEqual(["actor", "critic", "ema"]);
  });

  it("never mixes two checkpoints saved at the same step: the newer one is the step's", async () => {
    await new Promise((r) => setTimeout(r, 5)); // createdAt has millisecond precision
    const newer = await saveCheckpoints(t.db.prisma, {
      runId: ppo.runId,
      stageId: ppo.id,
      step: 4,
      final: false,
      files: [file("actor", 7), file("critic", 8)],
    });
    const set = await latestCheckpointSet(t.db.prisma, ppo.id);
    expect(set?.checkpoints.map((c) => c.id)).toEqual(newer.map((r) => r.id));
    expect((await checkpointsAtStep(t.db.prisma, ppo.id, 4)).map((c) => c.role)).toEqual([
      "actor",
      "critic",
    ]);
  });

  it("refuses a checkpoint without files or with a role twice, before writing anything", async () => {
    const base = { runId: ppo.runId, stageId: ppo.id, step: 9, final: false };
    await expect(saveCheckpoints(t.db.prisma, { ...base, files: [] })).rejects.toThrow(
      "a checkpoint needs at least one model file",
    );
    await expect(
      saveCheckpoints(t.db.prisma, { ...base, files: [file("actor", 1), file("actor", 2)] }),
    ).rejects.toThrow('a checkpoint has one file per role; "actor" is repeated');
    expect(await checkpointsAtStep(t.db.prisma, ppo.id, 9)).toEqual([]);
  });
});

describe("metrics", () => {
  it("stores named values per step and lists a run's metrics by stage and name", async () => {
    const [sft, reward] = run.stages;
    expect(await addMetrics(t.db.prisma, sft.id, 1, { loss: 2.5, lr: 0.001 })).toBe(2);
    await addMetrics(t.db.prisma, sft.id, 2, { loss: 2.0, lr: 0.001 });
    await addMetrics(t.db.prisma, reward.id, 1, { loss: 0.69, accuracy: 0.5 });

    const all = await listMetrics(t.db.prisma, run.id);
    expect(all).toHaveLength(6);
    expect(typeof all[0].id).toBe("number");
    const sftLoss = await listMetrics(t.db.prisma, run.id, { stage: "sft", name: "loss" });
    expect(sftLoss.map((m) => [m.stageKind, m.step, m.value])).toEqual([
      ["sft", 1, 2.5],
      ["sft", 2, 2.0],
    ]);
    const rewardOnly = await listMetrics(t.db.prisma, run.id, { stage: "reward" });
    expect(rewardOnly.map((m) => m.name).sort()).toEqual(["accuracy", "loss"]);
    expect(await listMetrics(t.db.prisma, "run_000000000000000000000000")).toEqual([]);
  });

  it("refuses a value that is not a finite number, naming it, and stores none of the step", async () => {
    const [sft] = run.stages;
    await expect(addMetrics(t.db.prisma, sft.id, 3, { lr: 0.1, loss: Number.NaN })).rejects.toThrow(
      /metric loss at step 3 is NaN/,
    );
    expect(await t.db.prisma.metric.count({ where: { stageId: sft.id, step: 3 } })).toBe(0);
  });
});

describe("events", () => {
  it("lists a run's events newest first, a page at a time", async () => {
    for (let i = 0; i < 5; i++)
      await addEvent(t.db.prisma, run.id, i === 4 ? "error" : "info", `event ${i}`);
    const first = await listEvents(t.db.prisma, run.id, { limit: 2 });
    expect(first.data.map((e) => [e.level, e.message])).toEqual([
      ["error", "event 4"],
      ["info", "event 3"],
    ]);
    expect(first.hasMore).toBe(true);
    const rest = await listEvents(t.db.prisma, run.id, { after: first.data[1].id, limit: 10 });
    expect(rest.data.map((e) => e.message)).toEqual(["event 2", "event 1", "event 0"]);
    expect(rest.hasMore).toBe(false);
  });
});

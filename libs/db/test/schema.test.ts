// Writes and reads back every column of every model through the Prisma client on a freshly
// migrated database, on Postgres and on embedded PGlite, so prisma/schema.prisma and
// prisma/migrations cannot drift apart unnoticed: a column the migrations lack, a wrong type,
// a missing enum value or a missing default fails here.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase } from "../../../test/support/db.ts";
import {
  CheckpointRole,
  type Database,
  DatasetFormat,
  EventLevel,
  migrate,
  newId,
  openDatabase,
  Prisma,
  StageKind,
  Status,
} from "../src/index.ts";

const t0 = new Date("2026-01-02T03:04:05.678Z");
const t1 = new Date("2026-01-02T04:05:06.789Z");

/** Every scalar field of the model appears in `written` and reads back equal. */
function expectRoundTrip(fields: Record<string, string>, written: object, read: object | null) {
  expect(Object.keys(written).sort(), "the test writes every field").toEqual(
    Object.keys(fields).sort(),
  );
  expect(read).not.toBeNull();
  expect(Object.keys(read as object).sort(), "the client reads every field").toEqual(
    Object.keys(fields).sort(),
  );
  expect(read).toEqual(written);
}

type Target = { name: string; open(): Promise<{ db: Database; close(): Promise<void> }> };

const targets: Target[] = [
  {
    name: "Postgres",
    async open() {
      const t = await createTestDatabase();
      return { db: t.db, close: t.drop };
    },
  },
  {
    name: "PGlite",
    async open() {
      const dataDir = await mkdtemp(path.join(tmpdir(), "chatrl-schema-"));
      const db = await openDatabase({ dataDir });
      await migrate(db);
      return {
        db,
        async close() {
          await db.close();
          await rm(dataDir, { recursive: true, force: true });
        },
      };
    },
  },
];

describe.each(targets)("every model and field on $name", (target) => {
  let db: Database;
  let close: () => Promise<void>;
  beforeAll(async () => {
    ({ db, close } = await target.open());
  });
  afterAll(async () => close?.());

  it("stores and returns every column of every model, every enum value included", async () => {
    const p = db.prisma;

    const runs = Object.values(Status).map((status, i) => ({
      id: newId("run"),
      name: `run ${status}`,
      status,
      spec: { model: { preset: "tiny" }, data_split: [2, 4, 4], nested: { ok: true, n: null } },
      idempotencyKey: `key-${i}`,
      error: status === "failed" ? "out of memory" : null,
      warnings: i === 0 ? [] : ["dataset ds_x has examples of up to 300 tokens", "ünïcode"],
      createdAt: t0,
      startedAt: t0,
      finishedAt: t1,
    }));
    for (const run of runs) {
      await p.run.create({ data: run });
      expectRoundTrip(
        Prisma.RunScalarFieldEnum,
        run,
        await p.run.findUnique({ where: { id: run.id } }),
      );
    }
    const runId = runs[0].id;

    const stages = Object.values(StageKind).map((kind, i) => ({
      id: newId("stage"),
      runId,
      kind,
      status: Object.values(Status)[i],
      progress: 0.25 * (i + 1),
      step: 10 * i,
      maxSteps: 100,
      startedAt: t0,
      finishedAt: i === 0 ? t1 : null,
      wallSeconds: 12.5,
      deviceSeconds: 11.25,
      tokens: 9_007_199_254_740_993n, // above 2^53: a bigint column, not a float
      costUsd: 0.0123,
      device: "cuda:0",
      error: i === 1 ? "diverged" : null,
      examplesTruncated: 3 * i,
      examplesDropped: i,
      summary: i === 1 ? { accuracy: 0.75, chosen_score: 1.5, rejected_score: -0.5 } : {},
    }));
    for (const stage of stages) {
      await p.stage.create({ data: stage });
      expectRoundTrip(
        Prisma.StageScalarFieldEnum,
        stage,
        await p.stage.findUnique({ where: { id: stage.id } }),
      );
    }

    for (const format of Object.values(DatasetFormat)) {
      const dataset = {
        id: newId("ds"),
        name: `ds ${format}`,
        format,
        rowCount: 2,
        createdAt: t0,
        longestPrompt: 31,
        longestSft: 65,
        longestPair: 70,
      };
      await p.dataset.create({ data: dataset });
      expectRoundTrip(
        Prisma.DatasetScalarFieldEnum,
        dataset,
        await p.dataset.findUnique({ where: { id: dataset.id } }),
      );
      const row = {
        datasetId: dataset.id,
        index: 1,
        data: { prompt: "héllo ✓", chosen: "a", rejected: "b", n: 1.5, list: [1, "x", null] },
      };
      await p.datasetRow.create({ data: row });
      expectRoundTrip(
        Prisma.DatasetRowScalarFieldEnum,
        row,
        await p.datasetRow.findUnique({
          where: { datasetId_index: { datasetId: dataset.id, index: 1 } },
        }),
      );
    }

    for (const role of Object.values(CheckpointRole)) {
      const checkpoint = {
        id: newId("ckpt"),
        runId,
        stageId: stages[0].id,
        step: 7,
        role,
        final: role === "actor",
        config: { vocabSize: 256, dModel: 32, norm: "layernorm" },
        sha256: "ab".repeat(32),
        bytes: 2_000_000_000, // near the top of a 4-byte integer
        createdAt: t0,
      };
      await p.checkpoint.create({ data: checkpoint });
      expectRoundTrip(
        Prisma.CheckpointScalarFieldEnum,
        checkpoint,
        await p.checkpoint.findUnique({ where: { id: checkpoint.id } }),
      );
      const chunk = {
        checkpointId: checkpoint.id,
        part: "model",
        index: 0,
        data: new Uint8Array([0, 1, 2, 127, 128, 254, 255]),
      };
      await p.checkpointChunk.create({ data: chunk });
      const readChunk = await p.checkpointChunk.findUnique({
        where: {
          checkpointId_part_index: { checkpointId: checkpoint.id, part: "model", index: 0 },
        },
      });
      expectRoundTrip(Prisma.CheckpointChunkScalarFieldEnum, chunk, {
        ...readChunk,
        data: new Uint8Array(readChunk?.data ?? []),
      });
    }

    const metric = {
      id: 5_000_000_000n,
      stageId: stages[0].id,
      step: 3,
      name: "loss",
      value: -1.5e-7,
      time: t1,
    };
    await p.metric.create({ data: metric });
    expectRoundTrip(
      Prisma.MetricScalarFieldEnum,
      metric,
      await p.metric.findUnique({ where: { id: metric.id } }),
    );

    for (const [i, level] of Object.values(EventLevel).entries()) {
      const event = {
        id: BigInt(100 + i),
        runId,
        level,
        message: `a ${level} event`,
        time: t1,
      };
      await p.runEvent.create({ data: event });
      expectRoundTrip(
        Prisma.RunEventScalarFieldEnum,
        event,
        await p.runEvent.findUnique({ where: { id: event.id } }),
      );
    }

    const apiKey = { id: newId("key"), name: "ci", hash: "cd".repeat(32), createdAt: t0 };
    await p.apiKey.create({ data: apiKey });
    expectRoundTrip(
      Prisma.ApiKeyScalarFieldEnum,
      apiKey,
      await p.apiKey.findUnique({ where: { id: apiKey.id } }),
    );

    // Every model of the schema was exercised above.
    expect(Object.keys(Prisma.ModelName).sort()).toEqual(
      [
        "ApiKey",
        "Checkpoint",
        "CheckpointChunk",
        "Dataset",
        "DatasetRow",
        "Metric",
        "Run",
        "RunEvent",
        "Stage",
      ].sort(),
    );
  });

  it("fills the schema's defaults when a row gives only what is required", async () => {
    const p = db.prisma;
    const before = Date.now() - 60_000;
    const run = await p.run.create({ data: { id: newId("run"), name: "defaults", spec: {} } });
    expect(run).toMatchObject({
      status: "queued",
      idempotencyKey: null,
      error: null,
      startedAt: null,
    });
    expect(run.createdAt.getTime()).toBeGreaterThan(before);
    const stage = await p.stage.create({
      data: { id: newId("stage"), runId: run.id, kind: "sft", maxSteps: 5 },
    });
    expect(stage).toMatchObject({
      status: "queued",
      progress: 0,
      step: 0,
      wallSeconds: 0,
      deviceSeconds: 0,
      tokens: 0n,
      costUsd: 0,
      device: "cpu",
    });
    const m1 = await p.metric.create({
      data: { stageId: stage.id, step: 1, name: "loss", value: 1 },
    });
    const m2 = await p.metric.create({
      data: { stageId: stage.id, step: 2, name: "loss", value: 1 },
    });
    expect(m2.id).toBeGreaterThan(m1.id); // autoincrement
    const e = await p.runEvent.create({ data: { runId: run.id, level: "info", message: "x" } });
    expect(e.time.getTime()).toBeGreaterThan(before);
    const ckpt = await p.checkpoint.create({
      data: {
        id: newId("ckpt"),
        runId: run.id,
        stageId: stage.id,
        step: 0,
        role: "sft",
        config: {},
        sha256: "",
        bytes: 0,
      },
    });
    expect(ckpt.final).toBe(false);
  });

  it("enforces the schema's unique keys and cascades deletes from a run to everything under it", async () => {
    const p = db.prisma;
    const run = await p.run.create({
      data: { id: newId("run"), name: "cascade", spec: {}, idempotencyKey: "same" },
    });
    await expect(
      p.run.create({ data: { id: newId("run"), name: "dup", spec: {}, idempotencyKey: "same" } }),
    ).rejects.toMatchObject({ code: "P2002" });
    const stage = await p.stage.create({
      data: { id: newId("stage"), runId: run.id, kind: "ppo", maxSteps: 1 },
    });
    await expect(
      p.stage.create({ data: { id: newId("stage"), runId: run.id, kind: "ppo", maxSteps: 1 } }),
    ).rejects.toMatchObject({ code: "P2002" });
    const ckpt = await p.checkpoint.create({
      data: {
        id: newId("ckpt"),
        runId: run.id,
        stageId: stage.id,
        step: 0,
        role: "actor",
        config: {},
        sha256: "",
        bytes: 0,
      },
    });
    await p.checkpointChunk.create({
      data: { checkpointId: ckpt.id, part: "model", index: 0, data: new Uint8Array(1) },
    });
    await p.metric.create({ data: { stageId: stage.id, step: 0, name: "kl", value: 0 } });
    await p.runEvent.create({ data: { runId: run.id, level: "warn", message: "x" } });

    await p.run.delete({ where: { id: run.id } });
    expect(await p.stage.count({ where: { runId: run.id } })).toBe(0);
    expect(await p.checkpoint.count({ where: { runId: run.id } })).toBe(0);
    expect(await p.checkpointChunk.count({ where: { checkpointId: ckpt.id } })).toBe(0);
    expect(await p.metric.count({ where: { stageId: stage.id } })).toBe(0);
    expect(await p.runEvent.count({ where: { runId: run.id } })).toBe(0);
  });
});

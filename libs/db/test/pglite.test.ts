// Without DATABASE_URL chatrl runs on embedded PGlite; the repositories must behave the same there.
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import {
  addEvent,
  addMetrics,
  costSummary,
  createDataset,
  createRun,
  type Database,
  datasetLengths,
  finishStage,
  getRun,
  listEvents,
  listMetrics,
  listRuns,
  loadDatasetRows,
  migrate,
  openDatabase,
  readCheckpointPart,
  recordStageProgress,
  saveCheckpoint,
  startStage,
} from "../src/index.ts";
import { readMigrations } from "../src/migrate.ts";

let dataDir: string;
let db: Database;
let firstMigration: { applied: string[] };
beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), "chatrl-pglite-"));
  db = await openDatabase({ dataDir });
  firstMigration = await migrate(db);
});
afterAll(async () => {
  await db?.close();
  await rm(dataDir, { recursive: true, force: true });
});

it("applies the migrations once, recording them like on Postgres", async () => {
  expect(db.kind).toBe("pglite");
  const local = await readMigrations();
  expect(firstMigration).toEqual({ applied: local.map((m) => m.name) });
  expect(await migrate(db)).toEqual({ applied: [] });
  const recorded = await db.prisma.$queryRaw<{ migration_name: string; checksum: string }[]>`
    SELECT migration_name, checksum FROM "_prisma_migrations" ORDER BY migration_name`;
  expect(recorded).toEqual(local.map((m) => ({ migration_name: m.name, checksum: m.checksum })));
});

it("runs a whole run's bookkeeping on embedded PGlite", async () => {
  const p = db.prisma;
  const rows = Array.from({ length: 1_100 }, (_, i) => ({
    prompt: `q${i}`,
    chosen: "a",
    rejected: "b",
  }));
  const dataset = await createDataset(p, { name: "pref", format: "preference", rows });
  expect(await loadDatasetRows(p, dataset.id)).toEqual(rows);

  const run = await createRun(p, {
    name: "on pglite",
    spec: { seed: 1 },
    stages: [
      { kind: "sft", maxSteps: 2 },
      { kind: "reward", maxSteps: 2 },
    ],
  });
  const [sft, reward] = run.stages;
  await startStage(p, sft.id, "cpu");
  await recordStageProgress(p, sft.id, {
    step: 2,
    progress: 1,
    wallSeconds: 3,
    deviceSeconds: 2,
    tokens: 512,
    costUsd: 0.25,
  });
  await addMetrics(p, sft.id, 2, { loss: 1.25 });
  await addEvent(p, run.id, "info", "sft done");
  const model = randomBytes(5 * 1024 * 1024);
  const ckpt = await saveCheckpoint(p, {
    runId: run.id,
    stageId: sft.id,
    step: 2,
    role: "sft",
    final: true,
    config: {},
    model,
  });
  expect(
    Buffer.from((await readCheckpointPart(p, ckpt.id, "model")) as Uint8Array).equals(model),
  ).toBe(true);
  await finishStage(p, sft.id, { status: "succeeded" });
  await startStage(p, reward.id, "cpu");
  const { run: done } = await finishStage(p, reward.id, { status: "succeeded" });
  expect(done.status).toBe("succeeded");
  // The hot paths' own SQL (through Prisma here, not the pg pool) reads what Prisma wrote.
  expect(await getRun(p, run.id)).toEqual(done);
  expect(await datasetLengths(p, [dataset.id])).toEqual(
    new Map([[dataset.id, { prompt: 24 + "q1099".length, sft: 29 + 2, pair: 29 + 2 }]]),
  );

  expect((await listRuns(p, { limit: 10 })).data.map((r) => r.id)).toEqual([run.id]);
  expect((await listMetrics(p, run.id)).map((m) => [m.name, m.value])).toEqual([["loss", 1.25]]);
  expect((await listEvents(p, run.id, { limit: 10 })).data.map((e) => e.message)).toEqual([
    "sft done",
  ]);
  expect(await costSummary(p, "stage")).toEqual([
    {
      key: "sft",
      runs: 1,
      stages: 1,
      wallSeconds: 3,
      deviceSeconds: 2,
      tokens: 512,
      costUsd: 0.25,
    },
    { key: "reward", runs: 1, stages: 1, wallSeconds: 0, deviceSeconds: 0, tokens: 0, costUsd: 0 },
  ]);
});

it("keeps data and migration state across closing and reopening the data directory", async () => {
  await db.close();
  db = await openDatabase({ dataDir });
  expect(await migrate(db)).toEqual({ applied: [] });
  expect((await listRuns(db.prisma, { limit: 10 })).data.map((r) => r.name)).toEqual(["on pglite"]);
});

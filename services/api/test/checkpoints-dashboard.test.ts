import { createHash, randomBytes } from "node:crypto";
import {
  createRun,
  finishStage,
  recordStageProgress,
  saveCheckpoint,
  startStage,
} from "@chatrl/db";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestApi, type TestApi } from "./helpers.ts";

let api: TestApi;

beforeAll(async () => {
  api = await startTestApi();
});
afterAll(async () => {
  await api?.close();
});

async function runWithStage(name: string) {
  const prisma = api.database.db.prisma;
  return createRun(prisma, { name, spec: { name }, stages: [{ kind: "sft", maxSteps: 10 }] });
}

describe("checkpoints", () => {
  it("lists a run's checkpoints and serves the saved bytes with their sha256", async () => {
    const prisma = api.database.db.prisma;
    const run = await runWithStage("ckpt");
    // Larger than one 4 MiB chunk, so the bytes come back reassembled from several rows.
    const model = new Uint8Array(randomBytes(5 * 1024 * 1024 + 123));
    const checkpoint = await saveCheckpoint(prisma, {
      runId: run.id,
      stageId: run.stages[0].id,
      step: 10,
      role: "sft",
      final: true,
      config: { nLayers: 1 },
      model,
      trainer: new Uint8Array([1, 2, 3]),
    });
    const sha256 = createHash("sha256").update(model).digest("hex");

    const list = (await api.app.inject({ url: `/v1/runs/${run.id}/checkpoints` })).json();
    expect(list).toEqual({
      object: "list",
      has_more: false,
      data: [
        {
          id: checkpoint.id,
          object: "checkpoint",
          run_id: run.id,
          stage_id: run.stages[0].id,
          step: 10,
          role: "sft",
          final: true,
          sha256,
          bytes: model.byteLength,
          created_at: expect.any(Number),
        },
      ],
    });

    const content = await api.app.inject({ url: `/v1/checkpoints/${checkpoint.id}/content` });
    expect(content.statusCode).toBe(200);
    expect(content.headers["content-type"]).toBe("application/octet-stream");
    expect(content.headers["x-checkpoint-sha256"]).toBe(sha256);
    expect(content.headers.etag).toBe(`"${sha256}"`);
    expect(Buffer.compare(content.rawPayload, Buffer.from(model))).toBe(0);

    const cached = await api.app.inject({
      url: `/v1/checkpoints/${checkpoint.id}/content`,
      headers: { "if-none-match": `"${sha256}"` },
    });
    expect(cached.statusCode).toBe(304);
    expect(cached.rawPayload.byteLength).toBe(0);
  });

  it("answers 404 for an unknown checkpoint", async () => {
    const response = await api.app.inject({
      url: `/v1/checkpoints/ckpt_${"0".repeat(24)}/content`,
    });
    expect(response.statusCode).toBe(404);
    expect(response.headers["content-type"]).toMatch(/application\/json/);
    expect(response.json().error.param).toBe("id");
  });
});

describe("GET /v1/dashboard/costs", () => {
  it("sums time, tokens and money by run, stage and day", async () => {
    const prisma = api.database.db.prisma;
    // A fresh database apart from the checkpoint test's run, which never started: not counted.
    const spent = [
      { wallSeconds: 100, deviceSeconds: 90, tokens: 1000, costUsd: 0.25 },
      { wallSeconds: 50, deviceSeconds: 40, tokens: 500, costUsd: 0.5 },
    ];
    const runs = [];
    for (const [i, s] of spent.entries()) {
      const run = await runWithStage(`cost-${i}`);
      await startStage(prisma, run.stages[0].id, "cpu");
      await recordStageProgress(prisma, run.stages[0].id, { step: 10, progress: 1, ...s });
      await finishStage(prisma, run.stages[0].id, { status: "succeeded" });
      runs.push(run);
    }

    const byRun = (await api.app.inject({ url: "/v1/dashboard/costs?group_by=run" })).json();
    expect(byRun.group_by).toBe("run");
    const rowFor = (id: string) => byRun.data.find((r: { key: string }) => r.key === id);
    expect(rowFor(runs[0].id)).toEqual({
      key: runs[0].id,
      runs: 1,
      stages: 1,
      wall_seconds: 100,
      device_seconds: 90,
      tokens: 1000,
      cost_usd: 0.25,
    });
    expect(rowFor(runs[1].id)).toMatchObject({ tokens: 500, cost_usd: 0.5 });
    expect(byRun.total).toEqual({
      wall_seconds: 150,
      device_seconds: 130,
      tokens: 1500,
      cost_usd: 0.75,
    });

    const byStage = (await api.app.inject({ url: "/v1/dashboard/costs?group_by=stage" })).json();
    expect(byStage.data).toEqual([
      {
        key: "sft",
        runs: 2,
        stages: 2,
        wall_seconds: 150,
        device_seconds: 130,
        tokens: 1500,
        cost_usd: 0.75,
      },
    ]);

    const byDay = (await api.app.inject({ url: "/v1/dashboard/costs?group_by=day" })).json();
    const today = new Date().toISOString().slice(0, 10);
    expect(byDay.data).toEqual([expect.objectContaining({ key: today, runs: 2, cost_usd: 0.75 })]);

    const byDefault = (await api.app.inject({ url: "/v1/dashboard/costs" })).json();
    expect(byDefault.group_by).toBe("run");
  });
});

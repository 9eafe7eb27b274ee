import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDatasetId, runBody, startTestApi, type TestApi } from "./helpers.ts";
import { freePort } from "../../../test/support/process.ts";

// The api on a real database but with Redis pointed at a port nothing listens on.
let api: TestApi;

beforeAll(async () => {
  const port = await freePort();
  api = await startTestApi({}, { redisUrl: `redis://127.0.0.1:${port}`, queueTimeoutMs: 500 });
});
afterAll(async () => {
  await api?.close();
});

describe("when Redis is unreachable", () => {
  it("is alive but not ready, saying what is down", async () => {
    expect((await api.app.inject({ url: "/healthz" })).statusCode).toBe(200);
    const response = await api.app.inject({ url: "/readyz" });
    expect(response.statusCode).toBe(503);
    const { error } = response.json();
    expect(error).toMatchObject({ type: "service_unavailable", code: "not_ready" });
    // Without a key it names the dependency only (hosts and ports are for key holders).
    expect(error.message).toBe("Not ready: redis");
    expect(error.message).not.toMatch(/postgres/);
  });

  it("answers 503 to a run submission and records the run as failed", async () => {
    const datasetId = await createDatasetId(api.app);
    const response = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: runBody(datasetId),
    });
    expect(response.statusCode).toBe(503);
    expect(response.json().error).toMatchObject({ code: "queue_unavailable" });
    const runs = await api.database.db.prisma.run.findMany({ include: { stages: true } });
    expect(runs).toHaveLength(1);
    expect(runs[0].status).toBe("failed");
    expect(runs[0].error).toMatch(/Redis/);
    expect(runs[0].stages.map((s) => s.status)).toEqual(["failed"]);
    const events = (await api.app.inject({ url: `/v1/runs/${runs[0].id}/events` })).json();
    expect(events.data[0]).toMatchObject({
      level: "error",
      message: expect.stringMatching(/Could not queue/),
    });
  });

  it("still cancels a run in Postgres", async () => {
    const run = await api.database.db.prisma.run.create({
      data: {
        id: `run_${"c".repeat(24)}`,
        name: "queued before the outage",
        spec: {},
        stages: { create: [{ id: `stage_${"c".repeat(24)}`, kind: "sft", maxSteps: 5 }] },
      },
    });
    const response = await api.app.inject({ method: "POST", url: `/v1/runs/${run.id}/cancel` });
    expect(response.statusCode).toBe(200);
    expect(response.json().status).toBe("cancelled");
  });
});

describe("when Postgres is unreachable", () => {
  it("is not ready, saying Postgres is down, and answers requests with 503", async () => {
    const { openDatabase } = await import("@chatrl/db");
    const { buildApp } = await import("../src/app.ts");
    const { loadConfig } = await import("@chatrl/contracts");
    const { tmpdir } = await import("node:os");
    const databaseUrl = `postgresql://postgres@127.0.0.1:${await freePort()}/nowhere`;
    const db = await openDatabase({ databaseUrl, dataDir: tmpdir() });
    const config = loadConfig({
      DATABASE_URL: databaseUrl,
      REDIS_URL: api.redis.url,
      CHATRL_QUEUE_PREFIX: api.redis.prefix,
      CHATRL_LOG_LEVEL: "silent",
    });
    const app = await buildApp(config, { db, flow: api.flow, queues: api.queues });
    try {
      const response = await app.inject({ url: "/readyz" });
      expect(response.statusCode).toBe(503);
      expect(response.json().error.message).toBe("Not ready: postgres");
      expect(response.json().error.message).not.toMatch(/redis/);
      // An outage, not a bug: 503 (retry), saying what is down without the driver's details.
      const runs = await app.inject({ url: "/v1/runs" });
      expect(runs.statusCode).toBe(503);
      expect(runs.json().error).toEqual({
        message: "The database is unavailable; try again shortly",
        type: "service_unavailable",
        param: null,
        code: "database_unavailable",
      });
    } finally {
      await app.close();
      await db.close();
    }
  });
});

// The api server as main.ts starts it, with Redis lost after it connected (a TCP proxy cut).
import { loadConfig } from "@chatrl/contracts";
import { Queue } from "bullmq";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { freePort } from "../../../test/support/process.ts";
import { createTestRedis, redisProxy, type TestRedis } from "../../../test/support/redis.ts";
import { startApiServer } from "../src/server.ts";
import { runBody, SFT_JSONL, waitForJobs } from "./helpers.ts";

let database: TestDatabase;
let redis: TestRedis;
beforeAll(async () => {
  database = await createTestDatabase();
  redis = await createTestRedis();
});
afterAll(async () => {
  await redis?.cleanup();
  await database?.drop();
});

it("answers 503 to a run submitted while Redis is lost, and queues no job for it when Redis is back", async () => {
  const proxy = await redisProxy(redis.url);
  const config = loadConfig({
    DATABASE_URL: database.url,
    REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
    CHATRL_QUEUE_PREFIX: redis.prefix,
    CHATRL_API_PORT: String(await freePort()),
    CHATRL_LOG_LEVEL: "silent",
  });
  const server = await startApiServer(config);
  const sft = new Queue("sft", { connection: { url: redis.url }, prefix: redis.prefix });
  try {
    const upload = await server.app.inject({
      method: "POST",
      url: "/v1/datasets?name=basics",
      headers: { "content-type": "application/x-ndjson" },
      payload: SFT_JSONL,
    });
    const datasetId = upload.json().id;
    const first = await server.app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: runBody(datasetId),
    });
    expect(first.statusCode, first.body).toBe(201);

    await proxy.cut();
    // Once the api knows Redis is gone (a submission in the moment before is accepted: it waits
    // in Postgres for its flow, and the reconciler queues it when Redis is back).
    for (let i = 0; i < 100; i++) {
      if ((await server.app.inject({ url: "/readyz" })).statusCode === 503) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const submit = () =>
      server.app.inject({ method: "POST", url: "/v1/runs", payload: runBody(datasetId) });
    const lost = await submit();
    expect(lost.statusCode, lost.body).toBe(503);
    expect(lost.json().error.message).toMatch(/the job queue \(Redis\) is unavailable/);
    expect(lost.json().error.message).not.toMatch(/enableOfflineQueue|Stream/);
    const failedStages: string[] = [];
    const recordFailed = async () => {
      const [run] = (await server.app.inject({ url: "/v1/runs?limit=1" })).json().data;
      expect(run.status).toBe("failed");
      failedStages.push(run.stages[0].id);
    };
    await recordFailed();

    // Redis comes back on the same address; the api's connection reconnects within seconds.
    const restored = await redisProxy(redis.url, proxy.port);
    let again = await submit();
    for (let i = 0; i < 50 && again.statusCode === 503; i++) {
      await recordFailed();
      await new Promise((resolve) => setTimeout(resolve, 100));
      again = await submit();
    }
    expect(again.statusCode, again.body).toBe(201);
    await waitForJobs({ sft }, again.json());
    for (const stageId of failedStages) expect(await sft.getJob(stageId)).toBeUndefined();
    await server.close();
    await restored.cut();
  } finally {
    await sft.close();
  }
});

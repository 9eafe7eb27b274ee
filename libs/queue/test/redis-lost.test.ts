// Redis going away after the api connected: the connection then queues commands offline
// (maxRetriesPerRequest: null) instead of failing them, so every call must give up on its own.
import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestRedis, redisProxy, type TestRedis } from "../../../test/support/redis.ts";
import {
  closeStageQueues,
  createFlowProducer,
  createStageQueues,
  enqueueRun,
  QueueUnavailableError,
  redisConnection,
  removeRunJobs,
} from "../src/index.ts";

let redis: TestRedis;
beforeAll(async () => {
  redis = await createTestRedis();
});
afterAll(async () => {
  await redis?.cleanup();
});

it("gives up queueing and removing a run's jobs within the timeout when Redis is lost after connecting", async () => {
  const proxy = await redisProxy(redis.url);
  const connection = redisConnection(proxy.url);
  connection.on("error", () => {});
  const flow = createFlowProducer(connection, redis.prefix);
  const queues = createStageQueues(connection, redis.prefix);
  flow.on("error", () => {});
  for (const queue of Object.values(queues)) queue.on("error", () => {});
  const run = {
    id: `run_${"5".repeat(24)}`,
    stages: [{ id: `stage_${"5".repeat(24)}`, kind: "sft" as const }],
  };
  await enqueueRun(flow, run, { timeoutMs: 2000 });
  await Promise.all(Object.values(queues).map((queue) => queue.waitUntilReady()));

  await proxy.cut();
  for (const attempt of [
    () => removeRunJobs(queues, run, { timeoutMs: 300 }),
    () => enqueueRun(flow, { ...run, id: `run_${"6".repeat(24)}` }, { timeoutMs: 300 }),
  ]) {
    const started = Date.now();
    const outcome = await Promise.race([
      attempt().then(
        () => "resolved",
        (error) => error,
      ),
      new Promise((resolve) => setTimeout(() => resolve("still waiting after 3 s"), 3000)),
    ]);
    expect(outcome).toBeInstanceOf(QueueUnavailableError);
    expect(Date.now() - started).toBeLessThan(2000);
  }
  connection.disconnect();
  await flow.close().catch(() => {});
  await closeStageQueues(queues).catch(() => {});
});

// FlowThread: the api's flows added by a BullMQ FlowProducer on a thread of its own, on the real
// Redis (and through a TCP proxy that is cut, as a network outage would).
import type { Queue } from "bullmq";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestRedis, redisProxy, type TestRedis } from "../../../test/support/redis.ts";
import {
  closeStageQueues,
  createStageQueues,
  FlowThread,
  QueueUnavailableError,
  type RunToEnqueue,
  redisConnection,
} from "../src/index.ts";

let redis: TestRedis;
let connection: Redis;
let queues: Record<"sft" | "reward" | "ppo", Queue>;

beforeAll(async () => {
  redis = await createTestRedis();
  connection = redisConnection(redis.url);
  queues = createStageQueues(connection, redis.prefix);
});
afterAll(async () => {
  if (queues) await closeStageQueues(queues);
  connection?.disconnect();
  await redis?.cleanup();
});

const run = (n: number, kinds: ("sft" | "reward" | "ppo")[]): RunToEnqueue => ({
  id: `run_${String(n).padStart(24, "0")}`,
  stages: kinds.map((kind, i) => ({ id: `stage_${String(n * 10 + i).padStart(24, "0")}`, kind })),
});

/** Every job under the test prefix, as "queue:state:id". */
async function jobs(): Promise<string[]> {
  const found: string[] = [];
  for (const [name, queue] of Object.entries(queues)) {
    const counts = ["waiting", "waiting-children"] as const;
    for (const state of counts) {
      for (const job of await queue.getJobs([state])) found.push(`${name}:${state}:${job.id}`);
    }
  }
  return found.sort();
}

it("adds several runs' flows at once: ppo waits for sft and reward, job ids are stage ids, and adding again queues nothing", async () => {
  const thread = new FlowThread(redis.url, redis.prefix);
  try {
    const full = run(1, ["sft", "reward", "ppo"]);
    const sftOnly = run(2, ["sft"]);
    await thread.addRuns([full, sftOnly]);
    const expected = [
      `ppo:waiting-children:${full.stages[2].id}`,
      `reward:waiting:${full.stages[1].id}`,
      `sft:waiting:${full.stages[0].id}`,
      `sft:waiting:${sftOnly.stages[0].id}`,
    ].sort();
    expect(await jobs()).toEqual(expected);
    const child = await queues.sft.getJob(full.stages[0].id);
    expect(child?.data).toEqual({ runId: full.id, stageId: full.stages[0].id, kind: "sft" });
    expect(child?.parentKey).toContain(full.stages[2].id);

    await thread.addRuns([full, sftOnly]);
    expect(await jobs()).toEqual(expected);
  } finally {
    await thread.close();
  }
});

it("fails an add with QueueUnavailableError within its timeout while Redis is lost, and adds again once it is back", async () => {
  const proxy = await redisProxy(redis.url);
  const thread = new FlowThread(proxy.url, redis.prefix);
  try {
    await thread.addRuns([run(3, ["sft"])], { timeoutMs: 2000 });
    await proxy.cut();
    const lost = run(4, ["sft"]);
    const started = Date.now();
    const error = await thread.addRuns([lost], { timeoutMs: 500 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QueueUnavailableError);
    expect((error as Error).message).toContain(lost.id);
    expect(Date.now() - started).toBeLessThan(1500 + 1000);
    expect(await queues.sft.getJob(lost.stages[0].id)).toBeUndefined();

    // Redis reachable again on the same address: the thread's connection comes back by itself.
    const back = await redisProxy(redis.url, proxy.port);
    try {
      let added = false;
      for (let attempt = 0; attempt < 50 && !added; attempt++) {
        added = await thread.addRuns([lost], { timeoutMs: 500 }).then(
          () => true,
          () => new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 100)),
        );
      }
      expect(added).toBe(true);
      expect(await queues.sft.getJob(lost.stages[0].id)).toBeDefined();
    } finally {
      await back.cut();
    }
  } finally {
    await thread.close();
  }
});

it("refuses adds once closed", async () => {
  const thread = new FlowThread(redis.url, redis.prefix);
  await thread.close();
  await expect(thread.addRuns([run(5, ["sft"])])).rejects.toThrow(QueueUnavailableError);
  expect(await queues.sft.getJob(run(5, ["sft"]).stages[0].id)).toBeUndefined();
});

import type { FlowProducer, Queue } from "bullmq";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestRedis, type TestRedis } from "../../../test/support/redis.ts";
import {
  checkRedis,
  closeStageQueues,
  createFlowProducer,
  createStageQueues,
  enqueueRun,
  QueueUnavailableError,
  redisConnection,
  removeRunJobs,
  runFlows,
} from "../src/index.ts";

let redis: TestRedis;
let connection: Redis;
let flow: FlowProducer;
let queues: Record<"sft" | "reward" | "ppo", Queue>;

const hex = (c: string) => c.repeat(24);
const sftOnly = {
  id: `run_${hex("1")}`,
  stages: [{ id: `stage_${hex("1")}`, kind: "sft" as const }],
};
const fullRun = {
  id: `run_${hex("2")}`,
  stages: [
    { id: `stage_${hex("a")}`, kind: "sft" as const },
    { id: `stage_${hex("b")}`, kind: "reward" as const },
    { id: `stage_${hex("c")}`, kind: "ppo" as const },
  ],
};

async function closedRedisUrl(): Promise<string> {
  const { createServer } = await import("node:net");
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `redis://127.0.0.1:${port}`;
}

beforeAll(async () => {
  redis = await createTestRedis();
  connection = redisConnection(redis.url);
  flow = createFlowProducer(connection, redis.prefix);
  queues = createStageQueues(connection, redis.prefix);
});
afterAll(async () => {
  await flow?.close();
  if (queues) await closeStageQueues(queues);
  connection?.disconnect();
  await redis?.cleanup();
});

describe("enqueueRun", () => {
  it("queues an SFT-only run as one job whose id is the stage id, and a retry queues nothing", async () => {
    await enqueueRun(flow, sftOnly);
    await enqueueRun(flow, sftOnly);
    const jobs = await queues.sft.getJobs(["waiting"]);
    expect(jobs.map((j) => j.id)).toEqual([sftOnly.stages[0].id]);
    expect(jobs[0].name).toBe("sft");
    expect(jobs[0].data).toEqual({ runId: sftOnly.id, stageId: sftOnly.stages[0].id, kind: "sft" });
    expect(jobs[0].opts.attempts).toBe(1);
    expect(jobs[0].opts.removeOnFail).toBe(false);
    expect(jobs[0].parent).toBeUndefined();
  });

  it("queues a full run as one flow: ppo waits for sft and reward, which run side by side", async () => {
    await enqueueRun(flow, fullRun);
    await enqueueRun(flow, fullRun);
    const [sft, reward, ppo] = fullRun.stages.map((s) => s.id);
    const ppoJob = await queues.ppo.getJob(ppo);
    expect(await ppoJob?.getState()).toBe("waiting-children");
    for (const [queue, id] of [
      [queues.sft, sft],
      [queues.reward, reward],
    ] as const) {
      const child = await queue.getJob(id);
      expect(await child?.getState()).toBe("waiting");
      expect(child?.parent?.id).toBe(ppo);
      expect(child?.opts.failParentOnFailure).toBe(true);
    }
    expect(await queues.reward.count()).toBe(1);
    expect(await queues.ppo.getWaitingChildrenCount()).toBe(1);
    expect((await ppoJob!.getDependencies()).unprocessed).toHaveLength(2);
  });

  it("builds separate root jobs when there is no ppo stage", () => {
    const flows = runFlows({
      id: "run_x",
      stages: [
        { id: "stage_s", kind: "sft" },
        { id: "stage_r", kind: "reward" },
      ],
    });
    expect(flows.map((f) => [f.queueName, f.opts?.jobId, f.children])).toEqual([
      ["sft", "stage_s", undefined],
      ["reward", "stage_r", undefined],
    ]);
  });

  it("fails fast with QueueUnavailableError when Redis does not answer", async () => {
    const deadConnection = redisConnection(await closedRedisUrl());
    deadConnection.on("error", () => {});
    const deadFlow = createFlowProducer(deadConnection, redis.prefix);
    deadFlow.on("error", () => {});
    const started = Date.now();
    await expect(enqueueRun(deadFlow, sftOnly, { timeoutMs: 300 })).rejects.toBeInstanceOf(
      QueueUnavailableError,
    );
    expect(Date.now() - started).toBeLessThan(3000);
    deadConnection.disconnect();
    await deadFlow.close().catch(() => {});
  });
});

describe("removeRunJobs", () => {
  it("removes jobs still waiting, parents with their children", async () => {
    const removed = await removeRunJobs(queues, fullRun);
    expect(removed).toContain(fullRun.stages[2].id);
    for (const stage of fullRun.stages) {
      expect(await queues[stage.kind].getJob(stage.id)).toBeUndefined();
    }
    expect(await removeRunJobs(queues, sftOnly)).toEqual([sftOnly.stages[0].id]);
    expect(await queues.sft.getJob(sftOnly.stages[0].id)).toBeUndefined();
    expect(await removeRunJobs(queues, sftOnly)).toEqual([]);
  });

  it("leaves a job a worker has taken", async () => {
    const run = {
      id: `run_${hex("3")}`,
      stages: [{ id: `stage_${hex("3")}`, kind: "sft" as const }],
    };
    await enqueueRun(flow, run);
    // Take the job as a worker would, without processing it.
    const { Worker } = await import("bullmq");
    const workerConnection = redisConnection(redis.url);
    const worker = new Worker("sft", null, { connection: workerConnection, prefix: redis.prefix });
    const job = await worker.getNextJob("token-1");
    expect(job?.id).toBe(run.stages[0].id);
    expect(await removeRunJobs(queues, run)).toEqual([]);
    expect(await (await queues.sft.getJob(run.stages[0].id))?.getState()).toBe("active");
    await worker.close(true);
    workerConnection.disconnect();
  });
});

describe("checkRedis", () => {
  it("resolves when Redis answers", async () => {
    await expect(checkRedis(redis.url)).resolves.toBeUndefined();
  });

  it("rejects with a message naming the unreachable URL", async () => {
    const url = await closedRedisUrl();
    await expect(checkRedis(url, 500)).rejects.toThrow(`Redis at ${url} is unreachable`);
  });
});

// Builds the api on a fresh test database and a private Redis key prefix, as main.ts would.
import { loadConfig } from "@chatrl/contracts";
import {
  closeStageQueues,
  createFlowProducer,
  createStageQueues,
  FlowThread,
  redisConnection,
} from "@chatrl/queue";
import type { FastifyInstance } from "fastify";
import { vi } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { createTestRedis, type TestRedis } from "../../../test/support/redis.ts";
import { buildApp } from "../src/app.ts";

export type TestApi = {
  app: FastifyInstance;
  database: TestDatabase;
  redis: TestRedis;
  queues: ReturnType<typeof createStageQueues>;
  flow: ReturnType<typeof createFlowProducer>;
  close(): Promise<void>;
};

export async function startTestApi(
  env: Record<string, string> = {},
  opts: {
    redisUrl?: string;
    queueTimeoutMs?: number;
    dispatchRetryDelaysMs?: number[];
    /** Add submitted runs' flows on a FlowThread, as server.ts does (default true). */
    flowThread?: boolean;
  } = {},
): Promise<TestApi> {
  const database = await createTestDatabase();
  const redis = await createTestRedis();
  const redisUrl = opts.redisUrl ?? redis.url;
  const config = loadConfig({
    DATABASE_URL: database.url,
    REDIS_URL: redisUrl,
    CHATRL_QUEUE_PREFIX: redis.prefix,
    CHATRL_LOG_LEVEL: "silent",
    ...env,
  });
  const connection = redisConnection(redisUrl);
  connection.on("error", () => {});
  const flow = createFlowProducer(connection, redis.prefix);
  const queues = createStageQueues(connection, redis.prefix);
  const flowThread = opts.flowThread === false ? undefined : new FlowThread(redisUrl, redis.prefix);
  const app = await buildApp(config, {
    db: database.db,
    flow,
    flowThread,
    queues,
    queueTimeoutMs: opts.queueTimeoutMs ?? 5000,
    dispatchRetryDelaysMs: opts.dispatchRetryDelaysMs,
  });
  return {
    app,
    database,
    redis,
    queues,
    flow,
    async close() {
      await app.close();
      await flowThread?.close();
      await flow.close();
      await closeStageQueues(queues);
      connection.disconnect();
      await redis.cleanup();
      await database.drop();
    },
  };
}

/**
 * Resolves once every stage of `run` has its job in BullMQ: POST /v1/runs answers once the run is
 * committed, and its jobs follow (routes/run-dispatch.ts). Fails after `timeoutMs`.
 */
export async function waitForJobs(
  queues: Partial<TestApi["queues"]>,
  run: { stages: { id: string; kind: "sft" | "reward" | "ppo" }[] },
  timeoutMs = 5000,
): Promise<void> {
  await vi.waitFor(
    async () => {
      for (const stage of run.stages) {
        if (!(await queues[stage.kind]?.getJob(stage.id))) {
          throw new Error(`no job for ${stage.kind} stage ${stage.id} yet`);
        }
      }
    },
    { timeout: timeoutMs, interval: 20 },
  );
}

/** A localhost port nothing listens on (taken from the OS, then released). */
export const SFT_JSONL = [
  '{"prompt":"What is 2 plus 2?","response":"4."}',
  '{"prompt":"Capital of Norway?","response":"Oslo."}',
].join("\n");

export async function uploadDataset(app: FastifyInstance, body = SFT_JSONL, name = "basics") {
  const response = await app.inject({
    method: "POST",
    url: `/v1/datasets?name=${encodeURIComponent(name)}`,
    headers: { "content-type": "application/x-ndjson" },
    payload: body,
  });
  return response;
}

export async function createDatasetId(app: FastifyInstance): Promise<string> {
  const response = await uploadDataset(app);
  if (response.statusCode !== 201) throw new Error(`upload failed: ${response.body}`);
  return response.json().id;
}

export function runBody(datasetId: string, extra: Record<string, unknown> = {}) {
  return {
    name: "tiny-sft",
    model: { preset: "tiny" },
    datasets: [{ id: datasetId, weight: 1 }],
    data_split: [10, 0, 0],
    stages: { sft: { max_steps: 20, batch_size: 4, learning_rate: 0.003 } },
    compute: { device: "cpu", price_per_hour: 0.5 },
    ...extra,
  };
}

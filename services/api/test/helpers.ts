// Builds the api on a fresh test database and a private Redis key prefix, as main.ts would.
import { loadConfig } from "@chatrl/contracts";
import { createRun, type Db, saveCheckpoint } from "@chatrl/db";
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

/** The supervised rows uploadDataset sends when given none. */
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

/**
 * The datasets an RLHF run reads, `rows` rows each: supervised ("What is i plus 1?") and
 * preference pairs ("Say i politely").
 */
export async function uploadRlhfDatasets(app: FastifyInstance, rows: number) {
  const supervised = Array.from(
    { length: rows },
    (_, i) => `{"prompt":"What is ${i} plus 1?","response":"${i + 1}."}`,
  );
  const pairs = Array.from(
    { length: rows },
    (_, i) => `{"prompt":"Say ${i} politely","chosen":"${i}, please.","rejected":"${i}!"}`,
  );
  return {
    supervisedId: (await uploadDataset(app, supervised.join("\n"), "sums")).json().id as string,
    preferenceId: (await uploadDataset(app, pairs.join("\n"), "polite")).json().id as string,
  };
}

/**
 * An earlier SFT + reward run, as a finished one leaves it: `save(stage, role, config)` stores a
 * final checkpoint of its stage 0 (sft) or 1 (reward) and returns its id.
 */
export async function earlierRun(prisma: Db) {
  const earlier = await createRun(prisma, {
    name: "earlier",
    spec: {},
    stages: [
      { kind: "sft", maxSteps: 1 },
      { kind: "reward", maxSteps: 1 },
    ],
  });
  return async (stage: 0 | 1, role: "sft" | "reward" | "critic", config: object) =>
    (
      await saveCheckpoint(prisma, {
        runId: earlier.id,
        stageId: earlier.stages[stage].id,
        step: 1,
        role,
        final: true,
        config,
        model: new Uint8Array([1, 2, 3]),
      })
    ).id;
}

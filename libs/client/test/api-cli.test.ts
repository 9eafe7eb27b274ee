// `chatrl datasets ...` and `chatrl runs ...` against a real api listening on a port, with its
// own test database and Redis key prefix. No worker runs here: the test moves the stages
// through their states with the same repository calls the worker makes.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { buildApp } from "@chatrl/api";
import { loadConfig } from "@chatrl/contracts";
import {
  addMetrics,
  createRun as createRunRow,
  finishStage,
  recordStageProgress,
  startStage,
} from "@chatrl/db";
import {
  closeStageQueues,
  createFlowProducer,
  createStageQueues,
  redisConnection,
} from "@chatrl/queue";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { createTestRedis, type TestRedis } from "../../../test/support/redis.ts";
import { cli } from "./cli-io.ts";

let database: TestDatabase;
let redis: TestRedis;
let app: FastifyInstance;
let dir: string;
let closeQueues: () => Promise<void>;
let apiUrl: string;

const SFT_ROWS = [
  '{"prompt":"What is 2 plus 2?","response":"4."}',
  '{"prompt":"Capital of Norway?","response":"Oslo."}',
].join("\n");

/** Runs the CLI against the test api. */
const chatrl = (...argv: string[]) => cli(argv, { env: { CHATRL_API_URL: apiUrl } });

async function writeTemp(name: string, content: string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, content);
  return file;
}

async function uploadDataset(name: string): Promise<string> {
  const file = await writeTemp(`${name}.jsonl`, SFT_ROWS);
  const result = await chatrl("--json", "datasets", "upload", file, "--name", name);
  expect(result.code).toBe(0);
  return JSON.parse(result.stdout).id;
}

async function createRun(datasetId: string, extraArgs: string[] = [], name = "cli-run") {
  const spec = await writeTemp(
    `${name}.json`,
    JSON.stringify({
      name,
      model: { preset: "tiny" },
      datasets: [{ id: datasetId }],
      data_split: [10, 0, 0],
      stages: { sft: { max_steps: 20 } },
    }),
  );
  return chatrl("runs", "create", spec, ...extraArgs);
}

const runIdOf = (stdout: string) => /created (run_[0-9a-f]{24})/.exec(stdout)?.[1] ?? "";

async function sftStageOf(runId: string): Promise<string> {
  const run = await database.db.prisma.run.findUniqueOrThrow({
    where: { id: runId },
    include: { stages: true },
  });
  return run.stages[0].id;
}

beforeAll(async () => {
  database = await createTestDatabase();
  redis = await createTestRedis();
  dir = await mkdtemp(path.join(tmpdir(), "chatrl-cli-"));
  const config = loadConfig({
    DATABASE_URL: database.url,
    REDIS_URL: redis.url,
    CHATRL_QUEUE_PREFIX: redis.prefix,
    CHATRL_LOG_LEVEL: "silent",
  });
  const connection = redisConnection(redis.url);
  const flow = createFlowProducer(connection, redis.prefix);
  const queues = createStageQueues(connection, redis.prefix);
  closeQueues = async () => {
    await flow.close();
    await closeStageQueues(queues);
    connection.disconnect();
  };
  app = await buildApp(config, { db: database.db, flow, queues });
  apiUrl = await app.listen({ port: 0, host: "127.0.0.1" });
});

afterAll(async () => {
  await app?.close();
  await closeQueues?.();
  await redis?.cleanup();
  await database?.drop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("chatrl datasets", () => {
  it("uploads a JSONL file and lists it", async () => {
    const file = await writeTemp("basics.jsonl", SFT_ROWS);
    const upload = await chatrl("datasets", "upload", file, "--name", "basics");
    expect(upload.stderr).toBe("");
    expect(upload.code).toBe(0);
    expect(upload.stdout).toMatch(
      /^uploaded ds_[0-9a-f]{24} {2}basics {2}\(supervised, 2 rows\)\n$/,
    );
    const id = /ds_[0-9a-f]{24}/.exec(upload.stdout)?.[0];

    const list = await chatrl("datasets", "list");
    expect(list.code).toBe(0);
    const lines = list.stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^ID\s+NAME\s+FORMAT\s+ROWS\s+CREATED$/);
    expect(lines.find((l) => l.startsWith(id ?? "?"))).toMatch(/basics\s+supervised\s+2\s+\d{4}-/);
  });

  it("prints the api's complaint about a bad line as one error line", async () => {
    const file = await writeTemp("bad.jsonl", `${SFT_ROWS}\n{"prompt": "no response"}`);
    const result = await chatrl("datasets", "upload", file, "--name", "bad");
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toMatch(/^error: 400 .*line 3.*\n$/);
    expect(result.stderr.split("\n")).toHaveLength(2);
  });
});

describe("chatrl runs", () => {
  it("creates a run from a spec file, then lists and shows it", async () => {
    const datasetId = await uploadDataset("for-runs");
    const created = await createRun(datasetId);
    expect(created.stderr).toBe("");
    expect(created.code).toBe(0);
    expect(created.stdout).toMatch(
      /^created run_[0-9a-f]{24} {2}cli-run {2}queued {2}\(sft:queued\)\n$/,
    );
    const runId = runIdOf(created.stdout);

    const list = await chatrl("runs", "list");
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`${runId}\\s+cli-run\\s+queued\\s+sft:queued`));

    const shown = await chatrl("runs", "get", runId);
    expect(shown.code).toBe(0);
    const lines = shown.stdout.split("\n");
    expect(lines[0]).toBe(`${runId}  cli-run  queued`);
    expect(shown.stdout).toMatch(/STAGE\s+STATUS\s+STEP/);
    expect(shown.stdout).toMatch(/sft\s+queued\s+0\/20\s+0%/);

    const json = await chatrl("--json", "runs", "get", runId);
    expect(JSON.parse(json.stdout)).toMatchObject({ id: runId, object: "run", status: "queued" });
  });

  it("submits the example spec with --dataset in place of its placeholder", async () => {
    const datasetId = await uploadDataset("example");
    const example = fileURLToPath(new URL("../../../examples/sft-tiny.json", import.meta.url));
    const result = await chatrl("--json", "runs", "create", example, "--dataset", datasetId);
    expect(result.stderr).toBe("");
    const run = JSON.parse(result.stdout);
    expect(run).toMatchObject({ name: "example-sft-tiny", status: "queued" });
    const stored = await database.db.prisma.run.findUniqueOrThrow({ where: { id: run.id } });
    expect((stored.spec as { datasets: unknown }).datasets).toEqual([
      expect.objectContaining({ id: datasetId, weight: 1 }),
    ]);
  });

  it("names an unknown run in one error line", async () => {
    const result = await chatrl("runs", "get", "run_000000000000000000000000");
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^error: 404 .*run_000000000000000000000000.*\n$/);
  });

  it("follows a run to success, printing progress and the latest loss", async () => {
    const datasetId = await uploadDataset("to-follow");
    const runId = runIdOf((await createRun(datasetId)).stdout);
    const stageId = await sftStageOf(runId);
    // The follower's output so far; the half-way state is held until the follower printed it
    // (a fixed sleep was too short for a loaded machine's process start and polls).
    let printed = "";
    const following = cli(["runs", "follow", runId, "--interval", "50"], {
      env: { CHATRL_API_URL: apiUrl },
      onStdout: (text) => {
        printed = text;
      },
    });

    const prisma = database.db.prisma;
    await startStage(prisma, stageId, "cpu");
    await addMetrics(prisma, stageId, 10, { loss: 2.5 });
    await recordStageProgress(prisma, stageId, {
      step: 10,
      progress: 0.5,
      wallSeconds: 3,
      deviceSeconds: 3,
      tokens: 1000,
      costUsd: 0.001,
    });
    const halfWay = "sft: running step 10/20 loss 2.5000\n";
    for (let i = 0; i < 400 && !printed.includes(halfWay); i++) await sleep(50);
    await addMetrics(prisma, stageId, 20, { loss: 1.25 });
    await recordStageProgress(prisma, stageId, {
      step: 20,
      progress: 1,
      wallSeconds: 6,
      deviceSeconds: 6,
      tokens: 2000,
      costUsd: 0.002,
    });
    await finishStage(prisma, stageId, { status: "succeeded" });

    const result = await following;
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).toContain("sft: running step 10/20 loss 2.5000\n");
    expect(result.stdout).toContain("sft: succeeded step 20/20 loss 1.2500\n");
    expect(result.stdout).toContain(`run ${runId} succeeded`);
    expect(result.stdout).toContain(`chatrl chat --model run-${runId}-sft`);
  });

  it("follows a three-stage run with the reward model's eval accuracy and PPO's reward and KL", async () => {
    // Stored directly: the worker's repository calls move it, as in the test above.
    const prisma = database.db.prisma;
    const run = await createRunRow(prisma, {
      name: "three-stages",
      spec: { name: "three-stages" },
      stages: [
        { kind: "sft", maxSteps: 4 },
        { kind: "reward", maxSteps: 6 },
        { kind: "ppo", maxSteps: 2 },
      ],
    });
    const [sft, reward, ppo] = run.stages;
    // The follower's output so far; each state below is held until the follower printed it.
    let printed = "";
    const following = cli(["runs", "follow", run.id, "--interval", "50"], {
      env: { CHATRL_API_URL: apiUrl },
      onStdout: (text) => {
        printed = text;
      },
    });
    const shown = async (line: string) => {
      for (let i = 0; i < 200 && !printed.includes(`${line}\n`); i++) await sleep(50);
      expect(printed).toContain(`${line}\n`);
    };
    const step = async (
      stageId: string,
      n: number,
      max: number,
      values: Record<string, number>,
    ) => {
      await addMetrics(prisma, stageId, n, values);
      await recordStageProgress(prisma, stageId, {
        step: n,
        progress: n / max,
        wallSeconds: n,
        deviceSeconds: n,
        tokens: 10 * n,
        costUsd: 0,
      });
    };

    await startStage(prisma, sft.id, "cpu");
    await startStage(prisma, reward.id, "cpu");
    await step(sft.id, 4, 4, { loss: 1.5 });
    await addMetrics(prisma, reward.id, 3, { eval_accuracy: 0.625 });
    await step(reward.id, 3, 6, { loss: 0.69, accuracy: 0.5 });
    await shown("reward: running step 3/6 loss 0.6900 eval acc 0.6250");
    await addMetrics(prisma, reward.id, 6, { eval_accuracy: 0.875 });
    await step(reward.id, 6, 6, { loss: 0.3 });
    await finishStage(prisma, sft.id, { status: "succeeded" });
    await finishStage(prisma, reward.id, { status: "succeeded" });
    // The eval accuracy shown is the newest point, not the first or the training accuracy.
    await shown("reward: succeeded step 6/6 loss 0.3000 eval acc 0.8750");
    await startStage(prisma, ppo.id, "cpu");
    await step(ppo.id, 1, 2, { reward_score: -0.25, kl: 0, actor_loss: 0.1 });
    await shown("ppo: running step 1/2 reward -0.2500 kl 0.0000");
    await step(ppo.id, 2, 2, { reward_score: 1.5, kl: 0.0312, actor_loss: 0.05 });
    await finishStage(prisma, ppo.id, { status: "succeeded" });

    const result = await following;
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).toContain("sft: succeeded step 4/4 loss 1.5000\n");
    expect(result.stdout).toContain("ppo: succeeded step 2/2 reward 1.5000 kl 0.0312\n");
    expect(result.stdout).toContain(`chatrl chat --model run-${run.id}\n`);
  });

  it("exits non-zero with the error when a followed run fails", async () => {
    const datasetId = await uploadDataset("to-fail");
    const runId = runIdOf((await createRun(datasetId)).stdout);
    const stageId = await sftStageOf(runId);
    await startStage(database.db.prisma, stageId, "cpu");
    await finishStage(database.db.prisma, stageId, { status: "failed", error: "loss became NaN" });

    const result = await chatrl("runs", "follow", runId, "--interval", "50");
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(new RegExp(`^error: run ${runId} failed: .*loss became NaN\n$`));
  });

  it("cancels a run, which stops `runs create --follow` with a non-zero exit", async () => {
    const datasetId = await uploadDataset("to-cancel");
    const following = createRun(datasetId, ["--follow", "--interval", "50"], "to-cancel");
    let runId = "";
    for (let tries = 0; !runId && tries < 100; tries++) {
      await sleep(50);
      const run = await database.db.prisma.run.findFirst({ where: { name: "to-cancel" } });
      runId = run?.id ?? "";
    }
    const cancelled = await chatrl("runs", "cancel", runId);
    expect(cancelled.code).toBe(0);
    expect(cancelled.stdout).toBe(`${runId}  cancelled  (sft:cancelled)\n`);

    const followed = await following;
    expect(followed.code).toBe(3);
    expect(followed.stdout).toContain(`created ${runId}`);
    expect(followed.stderr).toBe(`error: run ${runId} cancelled\n`);
  });
});

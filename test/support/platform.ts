// The whole platform (scripts/platform.ts: api, worker, inference) on a test database and Redis
// key prefix of its own, on free ports, for tests that go through every service over HTTP.
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { ChatrlClient, Run } from "@chatrl/client";
import { loadConfig } from "@chatrl/contracts";
import type { Database } from "@chatrl/db";
import { type Platform, startPlatform } from "../../scripts/platform.ts";
import { createTestDatabase } from "./db.ts";
import { createTestRedis } from "./redis.ts";

export type TestPlatform = Platform & {
  /** The platform's database, for writing what a test needs with the repositories. */
  database: Database;
  /** Closes the platform, then drops its database and Redis keys. */
  stop(): Promise<void>;
};

export async function startTestPlatform(): Promise<TestPlatform> {
  const database = await createTestDatabase();
  const redis = await createTestRedis();
  const config = loadConfig({
    DATABASE_URL: database.url,
    REDIS_URL: redis.url,
    CHATRL_QUEUE_PREFIX: redis.prefix,
    CHATRL_HOST: "127.0.0.1",
    CHATRL_LOG_LEVEL: "silent",
  });
  let platform: Platform;
  try {
    platform = await startPlatform({ ...config, apiPort: 0, inferencePort: 0 });
  } catch (error) {
    await redis.cleanup();
    await database.drop();
    throw error;
  }
  return {
    ...platform,
    database: database.db,
    async stop() {
      await platform.close();
      await redis.cleanup();
      await database.drop();
    },
  };
}

/** A file of examples/ as text. */
export function readExample(name: string): Promise<string> {
  return readFile(new URL(`../../examples/${name}`, import.meta.url), "utf8");
}

/** Polls the run until it is succeeded, failed or cancelled (at most 10 minutes). */
export async function waitForRun(api: ChatrlClient, id: string): Promise<Run> {
  const deadline = Date.now() + 600_000;
  for (;;) {
    const run = await api.getRun(id);
    if (["succeeded", "failed", "cancelled"].includes(run.status)) return run;
    if (Date.now() > deadline) throw new Error(`run ${id} still ${run.status} after 10 minutes`);
    await sleep(500);
  }
}

import { spawn } from "node:child_process";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { createTestRedis, type TestRedis } from "../../../test/support/redis.ts";
import { closedPort } from "./helpers.ts";

const root = path.resolve(import.meta.dirname, "../../..");
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

async function waitForHealth(url: string, deadline: number): Promise<Response> {
  for (;;) {
    try {
      return await fetch(url);
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

it("main.ts serves from the environment's config and exits cleanly on SIGTERM", async () => {
  const port = await closedPort();
  // Node runs tsx's loader itself (not the tsx CLI), so the signal reaches the server process.
  const child = spawn(process.execPath, ["--import", "tsx", "services/api/src/main.ts"], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: database.url,
      REDIS_URL: redis.url,
      CHATRL_QUEUE_PREFIX: redis.prefix,
      CHATRL_API_PORT: String(port),
      CHATRL_HOST: "127.0.0.1",
      CHATRL_LOG_LEVEL: "info",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    const ready = await waitForHealth(`http://127.0.0.1:${port}/readyz`, Date.now() + 30_000);
    expect(await ready.json()).toEqual({ status: "ready", postgres: "ok", redis: "ok" });
  } finally {
    child.kill("SIGTERM");
  }
  expect(await exited, output).toBe(0);
  expect(output).toContain('"signal":"SIGTERM"');
});

it("main.ts says in one line that its port is taken and exits 1, without a stack trace", async () => {
  const { createServer } = await import("node:net");
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
  const { port } = taken.address() as { port: number };
  try {
    const child = spawn(process.execPath, ["--import", "tsx", "services/api/src/main.ts"], {
      cwd: root,
      env: {
        ...process.env,
        DATABASE_URL: database.url,
        REDIS_URL: redis.url,
        CHATRL_QUEUE_PREFIX: redis.prefix,
        CHATRL_API_PORT: String(port),
        CHATRL_HOST: "127.0.0.1",
        CHATRL_LOG_LEVEL: "silent",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(code).toBe(1);
    expect(stderr.trim()).toBe(
      `api: cannot start: listen EADDRINUSE: address already in use 127.0.0.1:${port}`,
    );
  } finally {
    taken.close();
  }
});

import { spawn } from "node:child_process";
import { createServer } from "node:net";
import path from "node:path";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";

const root = path.resolve(import.meta.dirname, "../../..");
let database: TestDatabase;

beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.drop();
});

/** A localhost port nothing listens on (taken from the OS, then released). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function waitFor(url: string, deadline: number): Promise<Response> {
  for (;;) {
    try {
      return await fetch(url);
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

it("main.ts serves on CHATRL_INFERENCE_PORT and exits cleanly on SIGTERM", async () => {
  const port = await freePort();
  // Node runs tsx's loader itself (not the tsx CLI), so the signal reaches the server process.
  const child = spawn(process.execPath, ["--import", "tsx", "services/inference/src/main.ts"], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: database.url,
      CHATRL_INFERENCE_PORT: String(port),
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
    const ready = await waitFor(`http://127.0.0.1:${port}/readyz`, Date.now() + 30_000);
    expect(await ready.json()).toEqual({ status: "ready", postgres: "ok" });
    const models = await fetch(`http://127.0.0.1:${port}/v1/models`);
    expect(await models.json()).toEqual({ object: "list", data: [] });
  } finally {
    child.kill("SIGTERM");
  }
  expect(await exited, output).toBe(0);
  expect(output).toContain('"signal":"SIGTERM"');
});

it("main.ts names a bad variable and exits 1", async () => {
  const child = spawn(process.execPath, ["--import", "tsx", "services/inference/src/main.ts"], {
    cwd: root,
    env: { ...process.env, CHATRL_INFERENCE_PORT: "eighty" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => (stderr += chunk));
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  expect(code).toBe(1);
  expect(stderr).toContain("CHATRL_INFERENCE_PORT");
});

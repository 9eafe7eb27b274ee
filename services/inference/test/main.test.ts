import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { freePort, startEntryPoint, waitForHttp } from "../../../test/support/process.ts";

let database: TestDatabase;

beforeAll(async () => {
  database = await createTestDatabase();
});
afterAll(async () => {
  await database?.drop();
});

it("main.ts serves on CHATRL_INFERENCE_PORT and exits cleanly on SIGTERM", async () => {
  const port = await freePort();
  const inference = startEntryPoint("services/inference/src/main.ts", {
    DATABASE_URL: database.url,
    CHATRL_INFERENCE_PORT: String(port),
    CHATRL_HOST: "127.0.0.1",
    CHATRL_LOG_LEVEL: "info",
  });
  try {
    const ready = await waitForHttp(`http://127.0.0.1:${port}/readyz`);
    expect(await ready.json()).toEqual({ status: "ready", postgres: "ok" });
    const models = await fetch(`http://127.0.0.1:${port}/v1/models`);
    expect(await models.json()).toEqual({ object: "list", data: [] });
  } finally {
    inference.child.kill("SIGTERM");
  }
  expect(await inference.exit, inference.output()).toBe(0);
  expect(inference.output()).toContain('"signal":"SIGTERM"');
});

it("main.ts names a bad variable and exits 1", async () => {
  const inference = startEntryPoint("services/inference/src/main.ts", {
    CHATRL_INFERENCE_PORT: "eighty",
  });
  expect(await inference.exit).toBe(1);
  expect(inference.stderr()).toContain("CHATRL_INFERENCE_PORT");
});

import { createServer } from "node:net";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { freePort, startEntryPoint, waitForHttp } from "../../../test/support/process.ts";
import { createTestRedis, type TestRedis } from "../../../test/support/redis.ts";

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

const env = (port: number, logLevel: string) => ({
  DATABASE_URL: database.url,
  REDIS_URL: redis.url,
  CHATRL_QUEUE_PREFIX: redis.prefix,
  CHATRL_API_PORT: String(port),
  CHATRL_HOST: "127.0.0.1",
  CHATRL_LOG_LEVEL: logLevel,
});

it("main.ts serves from the environment's config and exits cleanly on SIGTERM", async () => {
  const port = await freePort();
  const api = startEntryPoint("services/api/src/main.ts", env(port, "info"));
  try {
    const ready = await waitForHttp(`http://127.0.0.1:${port}/readyz`);
    expect(await ready.json()).toEqual({ status: "ready", postgres: "ok", redis: "ok" });
  } finally {
    api.child.kill("SIGTERM");
  }
  expect(await api.exit, api.output()).toBe(0);
  expect(api.output()).toContain('"signal":"SIGTERM"');
});

it("main.ts says in one line that its port is taken and exits 1, without a stack trace", async () => {
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
  const { port } = taken.address() as { port: number };
  try {
    const api = startEntryPoint("services/api/src/main.ts", env(port, "silent"));
    expect(await api.exit).toBe(1);
    expect(api.stderr().trim()).toBe(
      `api: cannot start: listen EADDRINUSE: address already in use 127.0.0.1:${port}`,
    );
  } finally {
    taken.close();
  }
});

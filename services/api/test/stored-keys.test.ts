// API keys kept in Postgres (`npm run api-keys`), alone or beside CHATRL_API_KEYS.
import { API_KEY_CACHE_MS, createApiKey, deleteApiKey } from "@chatrl/db";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestApi, type TestApi } from "./helpers.ts";

let api: TestApi;

beforeAll(async () => {
  api = await startTestApi();
});
afterAll(async () => {
  await api?.close();
});

const get = (authorization?: string, app = api.app) =>
  app.inject({ url: "/v1/runs", headers: authorization ? { authorization } : {} });

/**
 * Services cache what they know of stored keys for API_KEY_CACHE_MS: a change shows within that
 * time (and not much later), on every replica.
 */
async function statusWithinCache(authorization?: string, app = api.app): Promise<number> {
  const deadline = Date.now() + API_KEY_CACHE_MS + 250;
  let status = (await get(authorization, app)).statusCode;
  for (let last = status; Date.now() < deadline; last = status) {
    await new Promise((r) => setTimeout(r, 50));
    status = (await get(authorization, app)).statusCode;
    if (status !== last) return status;
  }
  return status;
}

describe("API keys stored in Postgres", () => {
  it("close an open api with the first key, accept it, and reopen it when the last is deleted", async () => {
    const prisma = api.database.db.prisma;
    expect((await get()).statusCode).toBe(200);

    const first = await createApiKey(prisma, "laptop");
    const second = await createApiKey(prisma, "ci");
    expect(first.key).toMatch(/^sk-chatrl-[0-9a-f]{48}$/);
    expect(await statusWithinCache()).toBe(401);
    expect((await get("Bearer sk-chatrl-guess")).statusCode).toBe(401);
    expect((await get(`Bearer ${first.key}`)).statusCode).toBe(200);
    expect((await get(`Bearer ${second.key}`)).statusCode).toBe(200);

    // Only a hash is kept: the key appears in no column.
    const rows = await prisma.apiKey.findMany();
    expect(JSON.stringify(rows)).not.toContain(first.key);

    expect(await deleteApiKey(prisma, first.id)).toBe(true);
    expect(await statusWithinCache(`Bearer ${first.key}`)).toBe(401);
    expect(await deleteApiKey(prisma, second.id)).toBe(true);
    expect(await deleteApiKey(prisma, second.id)).toBe(false);
    expect(await statusWithinCache()).toBe(200);
  });

  it("take a key deleted through another replica out of use within a second, without asking Postgres per request", async () => {
    const prisma = api.database.db.prisma;
    await createApiKey(prisma, "keeps the api closed");
    const key = await createApiKey(prisma, "shared");
    expect(await statusWithinCache(`Bearer ${key.key}`)).toBe(200);
    // Requests within the cache period cost no key queries.
    let keyQueries = 0;
    const counted = prisma.$extends({
      query: {
        apiKey: {
          async $allOperations({ args, query }) {
            keyQueries += 1;
            return query(args);
          },
        },
      },
    });
    const { buildApp } = await import("../src/app.ts");
    const { loadConfig } = await import("@chatrl/contracts");
    const replica = await buildApp(
      loadConfig({ DATABASE_URL: api.database.url, CHATRL_LOG_LEVEL: "silent" }),
      {
        db: { ...api.database.db, prisma: counted as unknown as typeof prisma },
        flow: api.flow,
        queues: api.queues,
      },
    );
    try {
      for (let i = 0; i < 50; i++)
        expect((await get(`Bearer ${key.key}`, replica)).statusCode).toBe(200);
      expect(keyQueries).toBeLessThanOrEqual(4);
      const removedAt = Date.now();
      await deleteApiKey(prisma, key.id); // through the first replica's database handle
      expect(await statusWithinCache(`Bearer ${key.key}`, replica)).toBe(401);
      expect(Date.now() - removedAt).toBeLessThan(API_KEY_CACHE_MS + 250);
    } finally {
      await replica.close();
    }
  });

  it("accept stored and configured keys side by side", async () => {
    const secured = await startTestApi({ CHATRL_API_KEYS: "env-key" });
    try {
      const prisma = secured.database.db.prisma;
      const stored = await createApiKey(prisma, "stored");
      for (const key of ["env-key", stored.key]) {
        const res = await secured.app.inject({
          url: "/v1/runs",
          headers: { authorization: `Bearer ${key}` },
        });
        expect(res.statusCode, key).toBe(200);
      }
      expect((await secured.app.inject({ url: "/v1/runs" })).statusCode).toBe(401);
    } finally {
      await secured.close();
    }
  });
});

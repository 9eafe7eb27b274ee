// API keys kept in Postgres (`npm run api-keys`), alone or beside CHATRL_API_KEYS.
import { createApiKey, deleteApiKey } from "@chatrl/db";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestApi, type TestApi } from "./helpers.ts";

let api: TestApi;

beforeAll(async () => {
  api = await startTestApi();
});
afterAll(async () => {
  await api?.close();
});

const get = (authorization?: string) =>
  api.app.inject({ url: "/v1/runs", headers: authorization ? { authorization } : {} });

describe("API keys stored in Postgres", () => {
  it("close an open api with the first key, accept it, and reopen it when the last is deleted", async () => {
    const prisma = api.database.db.prisma;
    expect((await get()).statusCode).toBe(200);

    const first = await createApiKey(prisma, "laptop");
    const second = await createApiKey(prisma, "ci");
    expect(first.key).toMatch(/^sk-chatrl-[0-9a-f]{48}$/);
    expect((await get()).statusCode).toBe(401);
    expect((await get("Bearer sk-chatrl-guess")).statusCode).toBe(401);
    expect((await get(`Bearer ${first.key}`)).statusCode).toBe(200);
    expect((await get(`Bearer ${second.key}`)).statusCode).toBe(200);

    // Only a hash is kept: the key appears in no column.
    const rows = await prisma.apiKey.findMany();
    expect(JSON.stringify(rows)).not.toContain(first.key);

    expect(await deleteApiKey(prisma, first.id)).toBe(true);
    expect((await get(`Bearer ${first.key}`)).statusCode).toBe(401);
    expect(await deleteApiKey(prisma, second.id)).toBe(true);
    expect(await deleteApiKey(prisma, second.id)).toBe(false);
    expect((await get()).statusCode).toBe(200);
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

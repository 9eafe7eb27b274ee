import { tmpdir } from "node:os";
import { Redis } from "ioredis";
import pg from "pg";
import { describe, expect, inject, it } from "vitest";
import { createTestDatabase } from "../../../test/support/db.ts";
import { createTestRedis } from "../../../test/support/redis.ts";
import { openDatabase } from "../src/index.ts";

async function adminRows<T>(sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: inject("adminDatabaseUrl") });
  await client.connect();
  try {
    return (await client.query(sql, params)).rows as T[];
  } finally {
    await client.end();
  }
}

const connectionsTo = async (name: string) =>
  (
    await adminRows<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1",
      [name],
    )
  )[0].n;

describe("test database support", () => {
  it("gives each call its own migrated database and drop() removes it", async () => {
    const a = await createTestDatabase();
    const b = await createTestDatabase();
    const nameA = new URL(a.url).pathname.slice(1);
    expect(nameA).not.toBe(new URL(b.url).pathname.slice(1));
    await a.db.prisma.apiKey.create({ data: { id: "key_1", name: "only in a", hash: "h" } });
    expect(await b.db.prisma.apiKey.count()).toBe(0);

    await a.drop();
    await b.drop();
    await a.drop(); // a second drop is harmless
    const left = await adminRows("SELECT datname FROM pg_database WHERE datname = $1", [nameA]);
    expect(left).toEqual([]);
  });

  it("opening and closing databases many times leaves no connection behind", async () => {
    const t = await createTestDatabase();
    const name = new URL(t.url).pathname.slice(1);
    try {
      const baseline = await connectionsTo(name);
      for (let i = 0; i < 15; i++) {
        const db = await openDatabase({ databaseUrl: t.url, dataDir: tmpdir(), maxConnections: 3 });
        await Promise.all([1, 2, 3].map(() => db.prisma.run.count()));
        await db.close();
      }
      expect(await connectionsTo(name)).toBe(baseline);
    } finally {
      await t.drop();
    }
  });
});

describe("test Redis support", () => {
  it("cleanup() deletes every key under its prefix and nothing else", async () => {
    const r = await createTestRedis();
    const other = await createTestRedis();
    expect(r.prefix).not.toBe(other.prefix);
    const redis = new Redis(r.url);
    try {
      const mine = Array.from({ length: 1_200 }, (_, i) => `${r.prefix}:sft:${i}`);
      await redis.mset(...mine.flatMap((k) => [k, "1"]));
      await redis.set(`${other.prefix}:sft:1`, "1");
      await r.cleanup();
      expect(await redis.exists(...mine)).toBe(0);
      expect(await redis.exists(`${other.prefix}:sft:1`)).toBe(1);
      await other.cleanup();
      expect(await redis.exists(`${other.prefix}:sft:1`)).toBe(0);
    } finally {
      await redis.quit();
    }
  });
});

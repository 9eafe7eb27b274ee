// A fresh, migrated Postgres database per call, on the server globalSetup chose.
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { type Database, migrate, openDatabase } from "@chatrl/db";
import pg from "pg";
import { inject } from "vitest";

export type TestDatabase = { url: string; db: Database; drop(): Promise<void> };

/** `migrated: false` leaves the database empty (for tests of the migration runner itself). */
export async function createTestDatabase(opts: { migrated?: boolean } = {}): Promise<TestDatabase> {
  const adminUrl = inject("adminDatabaseUrl");
  const name = `chatrl_test_${randomBytes(6).toString("hex")}`;
  await adminQuery(adminUrl, `CREATE DATABASE "${name}"`);
  const url = withDatabaseName(adminUrl, name);
  let db: Database | undefined;
  try {
    // Tests need few connections; a small pool keeps many open test databases cheap.
    db = await openDatabase({ databaseUrl: url, dataDir: tmpdir(), maxConnections: 4 });
    if (opts.migrated !== false) await migrate(db);
  } catch (err) {
    await db?.close();
    await adminQuery(adminUrl, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    throw err;
  }
  const opened = db;
  let dropped = false;
  return {
    url,
    db: opened,
    async drop() {
      if (dropped) return;
      dropped = true;
      await opened.close();
      await adminQuery(adminUrl, `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    },
  };
}

export function withDatabaseName(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

async function adminQuery(adminUrl: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

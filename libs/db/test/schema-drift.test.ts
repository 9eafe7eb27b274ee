// prisma/schema.prisma and prisma/migrations must describe the same database. Prisma's schema
// engine (wasm build) replays the committed migrations on a throwaway shadow database and diffs
// the result against the schema, as `prisma migrate diff --from-migrations` would.
import { cp, readFile, rm, writeFile } from "node:fs/promises";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { describe, expect, inject, it } from "vitest";
import { DEFAULT_MIGRATIONS_DIR, readMigrations } from "../src/migrate.ts";
import { DEFAULT_SCHEMA_PATH, diffToSchema, migrationStatus } from "../src/schema-engine.ts";
import { createTestDatabase } from "../../../test/support/db.ts";

const databaseUrl = () => inject("adminDatabaseUrl");

async function databaseNames(): Promise<string[]> {
  const client = new pg.Client({ connectionString: databaseUrl() });
  await client.connect();
  try {
    return (await client.query("SELECT datname FROM pg_database")).rows.map((r) => r.datname);
  } finally {
    await client.end();
  }
}

describe("schema and migrations", () => {
  it("the committed migrations produce exactly the schema in prisma/schema.prisma", async () => {
    const before = (await databaseNames()).filter((n) => n.startsWith("chatrl_shadow_"));
    const drift = await diffToSchema({ from: "migrations", databaseUrl: databaseUrl() });
    expect(
      drift,
      "schema.prisma changed without a migration: run libs/db/src/new-migration-cli.ts",
    ).toBe("");
    // The shadow database is gone again.
    const after = (await databaseNames()).filter((n) => n.startsWith("chatrl_shadow_"));
    expect(after.filter((n) => !before.includes(n))).toEqual([]);
  });

  it("the newest migration holds what Prisma generates from the migrations before it", async () => {
    // With only the init migration this is Prisma's diff from an empty database. Later ones may
    // have hand-written back-fills around the engine's statements (docs/decisions/0001).
    const migrations = await readMigrations();
    const newest = migrations.at(-1);
    if (!newest) throw new Error("no migrations");
    const dir = await mkdtemp(path.join(tmpdir(), "chatrl-earlier-"));
    try {
      const lock = "migration_lock.toml";
      await cp(path.join(DEFAULT_MIGRATIONS_DIR, lock), path.join(dir, lock));
      for (const { name } of migrations.slice(0, -1)) {
        await cp(path.join(DEFAULT_MIGRATIONS_DIR, name), path.join(dir, name), {
          recursive: true,
        });
      }
      const expected =
        migrations.length === 1
          ? await diffToSchema({ from: "empty", databaseUrl: databaseUrl() })
          : await diffToSchema({
              from: "migrations",
              databaseUrl: databaseUrl(),
              migrationsDir: dir,
            });
      expect(expected).not.toBe("");
      if (migrations.length === 1) expect(newest.script).toBe(expected);
      else expect(newest.script).toContain(expected);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("notices a field added to the schema without a migration", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "chatrl-drift-"));
    try {
      const schema = await readFile(DEFAULT_SCHEMA_PATH, "utf8");
      const changed = schema.replace(/(model ApiKey \{\n)/, "$1  note      String?\n");
      expect(changed).not.toBe(schema);
      const schemaPath = path.join(dir, "schema.prisma");
      await writeFile(schemaPath, changed);
      const drift = await diffToSchema({
        from: "migrations",
        databaseUrl: databaseUrl(),
        schemaPath,
      });
      expect(drift).toContain('ALTER TABLE "api_key" ADD COLUMN     "note" TEXT;');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("Prisma's view of a database migrated by our runner", () => {
  it("is what `prisma migrate status` calls up to date", async () => {
    const t = await createTestDatabase();
    try {
      expect(await migrationStatus({ databaseUrl: t.url })).toEqual({
        editedMigrationNames: [],
        failedMigrationNames: [],
        hasMigrationsTable: true,
        history: null,
      });
    } finally {
      await t.drop();
    }
  });

  it("names the migrations a fresh database still lacks", async () => {
    const t = await createTestDatabase({ migrated: false });
    try {
      const status = await migrationStatus({ databaseUrl: t.url });
      expect(status.history).toEqual({
        diagnostic: "databaseIsBehind",
        unappliedMigrationNames: (await readMigrations()).map((m) => m.name),
      });
    } finally {
      await t.drop();
    }
  });
});

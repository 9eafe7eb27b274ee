import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { migrate, openDatabase } from "../src/index.ts";
import { checksumOf, DEFAULT_MIGRATIONS_DIR, readMigrations } from "../src/migrate.ts";

type MigrationRow = {
  id: string;
  checksum: string;
  migration_name: string;
  finished_at: Date | null;
  started_at: Date;
  logs: string | null;
  rolled_back_at: Date | null;
  applied_steps_count: number;
};

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function emptyDatabase(): Promise<TestDatabase> {
  const t = await createTestDatabase({ migrated: false });
  cleanups.push(t.drop);
  return t;
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "chatrl-db-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function tableNames(t: TestDatabase): Promise<string[]> {
  const rows = await t.db.prisma.$queryRaw<{ table_name: string }[]>`
    SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`;
  return rows.map((r) => r.table_name);
}

describe("migrate on Postgres", () => {
  it("applies every migration on a fresh database once, and nothing on a second run", async () => {
    const t = await emptyDatabase();
    const local = await readMigrations();
    expect(local.length).toBeGreaterThan(0);

    expect(await migrate(t.db)).toEqual({ applied: local.map((m) => m.name) });
    expect(await migrate(t.db)).toEqual({ applied: [] });
    expect(await tableNames(t)).toEqual([
      "_prisma_migrations",
      "api_key",
      "checkpoint",
      "checkpoint_chunk",
      "dataset",
      "dataset_row",
      "metric",
      "run",
      "run_event",
      "stage",
    ]);
  });

  it("records migrations in _prisma_migrations the way Prisma does", async () => {
    const t = await emptyDatabase();
    await migrate(t.db);
    const rows = await t.db.prisma.$queryRaw<MigrationRow[]>`SELECT * FROM "_prisma_migrations"`;
    const local = await readMigrations();
    expect(rows).toHaveLength(local.length);
    for (const migration of local) {
      const row = rows.find((r) => r.migration_name === migration.name);
      expect(row, migration.name).toBeDefined();
      const file = await readFile(
        path.join(DEFAULT_MIGRATIONS_DIR, migration.name, "migration.sql"),
      );
      // Prisma's checksum: sha256 of the file's bytes, lowercase hex.
      expect(row?.checksum).toBe(checksumOf(file.toString("utf8")));
      expect(row?.checksum).toMatch(/^[0-9a-f]{64}$/);
      expect(row?.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(row?.finished_at).toBeInstanceOf(Date);
      expect(row?.rolled_back_at).toBeNull();
      expect(row?.logs).toBeNull();
      expect(row?.applied_steps_count).toBe(1);
    }
  });

  it("applies a migration once when several processes start at the same time", async () => {
    const t = await emptyDatabase();
    const others = await Promise.all(
      [1, 2, 3].map(() =>
        openDatabase({ databaseUrl: t.url, dataDir: tmpdir(), maxConnections: 2 }),
      ),
    );
    cleanups.push(async () => {
      for (const db of others) await db.close();
    });
    const results = await Promise.all([t.db, ...others].map((db) => migrate(db)));
    const local = await readMigrations();
    expect(results.flatMap((r) => r.applied).sort()).toEqual(local.map((m) => m.name).sort());
    const count = await t.db.prisma.$queryRaw<{ n: number }[]>`
      SELECT count(*)::int AS n FROM "_prisma_migrations"`;
    expect(count[0].n).toBe(local.length);
  });

  it("rolls a failing migration back completely and names it in the error", async () => {
    const t = await emptyDatabase();
    const dir = await tempDir();
    await cp(DEFAULT_MIGRATIONS_DIR, dir, { recursive: true });
    const broken = "29991231000000_broken";
    await mkdir(path.join(dir, broken));
    await writeFile(
      path.join(dir, broken, "migration.sql"),
      'CREATE TABLE "half_done" ("id" TEXT);\nALTER TABLE "no_such_table" ADD COLUMN "x" INTEGER;\n',
    );

    await expect(migrate(t.db, { migrationsDir: dir })).rejects.toThrow(
      /migration 29991231000000_broken failed and was rolled back: .*no_such_table/,
    );
    expect(await tableNames(t)).not.toContain("half_done");
    const names = await t.db.prisma.$queryRaw<{ migration_name: string }[]>`
      SELECT migration_name FROM "_prisma_migrations"`;
    expect(names.map((n) => n.migration_name)).not.toContain(broken);
    // The migrations before it are applied and stay applied.
    expect(await migrate(t.db)).toEqual({ applied: [] });
  });

  it("refuses to go on when an applied migration file was edited afterwards", async () => {
    const t = await emptyDatabase();
    const dir = await tempDir();
    await cp(DEFAULT_MIGRATIONS_DIR, dir, { recursive: true });
    await migrate(t.db, { migrationsDir: dir });
    const [first] = await readMigrations(dir);
    await writeFile(path.join(dir, first.name, "migration.sql"), `${first.script}\n-- edited\n`);
    await expect(migrate(t.db, { migrationsDir: dir })).rejects.toThrow(
      new RegExp(`migration ${first.name} was changed after it was applied`),
    );
  });

  it("refuses to go on past a migration that Prisma left unfinished", async () => {
    const t = await emptyDatabase();
    await migrate(t.db);
    await t.db.prisma.$executeRaw`
      INSERT INTO "_prisma_migrations" (id, checksum, migration_name, started_at, applied_steps_count)
      VALUES ('00000000-0000-4000-8000-000000000000', 'x', '20990101000000_failed', now(), 0)`;
    await expect(migrate(t.db)).rejects.toThrow(/20990101000000_failed failed earlier/);
  });
});

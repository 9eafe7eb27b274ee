// Applies prisma/migrations/*/migration.sql the way `prisma migrate deploy` would, without the
// native schema engine (docs/decisions/0001-offline-migrations.md). The bookkeeping is Prisma's
// own `_prisma_migrations` table, so `prisma migrate status` on a machine with the engine agrees.
import { createHash, randomUUID } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { Database, Driver } from "./database.ts";
import { driverOf } from "./database.ts";

export const DEFAULT_MIGRATIONS_DIR = fileURLToPath(
  new URL("../../../prisma/migrations", import.meta.url),
);

// The key Prisma's schema engine locks, so our runner and `prisma migrate deploy` exclude each
// other as well as concurrent starts of our own services.
const PRISMA_ADVISORY_LOCK_KEY = 72707369;

// Prisma's own definition (prisma-engines, postgres flavour).
const CREATE_MIGRATIONS_TABLE = `
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
)`;

export type LocalMigration = { name: string; script: string; checksum: string };

type AppliedRow = {
  migration_name: string;
  checksum: string;
  finished_at: Date | string | null;
  rolled_back_at: Date | string | null;
};

/** A connection that keeps its session (advisory locks are per session). */
type Session = {
  query<T>(sql: string, params?: unknown[]): Promise<T[]>;
  /** Runs `fn` inside BEGIN/COMMIT; `exec` runs a multi-statement script. */
  transaction(
    fn: (tx: {
      exec(script: string): Promise<void>;
      query(sql: string, params?: unknown[]): Promise<unknown>;
    }) => Promise<void>,
  ): Promise<void>;
};

export function checksumOf(script: string): string {
  return createHash("sha256").update(script, "utf8").digest("hex");
}

/** Migration directories in name order (Prisma's timestamp prefixes make that time order). */
export async function readMigrations(dir = DEFAULT_MIGRATIONS_DIR): Promise<LocalMigration[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const names = entries
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
  const migrations: LocalMigration[] = [];
  for (const name of names) {
    const script = await readFile(path.join(dir, name, "migration.sql"), "utf8");
    migrations.push({ name, script, checksum: checksumOf(script) });
  }
  return migrations;
}

export async function migrate(
  db: Database,
  opts: { migrationsDir?: string } = {},
): Promise<{ applied: string[] }> {
  const migrations = await readMigrations(opts.migrationsDir);
  return withSession(driverOf(db), async (session) => {
    await session.query("SELECT pg_advisory_lock($1)", [PRISMA_ADVISORY_LOCK_KEY]);
    try {
      await session.query(CREATE_MIGRATIONS_TABLE);
      const rows = await session.query<AppliedRow>(
        `SELECT migration_name, checksum, finished_at, rolled_back_at FROM "_prisma_migrations"`,
      );
      const done = new Map<string, AppliedRow>();
      for (const row of rows) {
        if (row.rolled_back_at !== null) continue;
        if (row.finished_at === null) {
          // Left by `prisma migrate deploy` (which runs without a transaction); Prisma refuses
          // to go on in this state too (P3009).
          throw new Error(
            `migration ${row.migration_name} failed earlier and is marked unfinished in _prisma_migrations; ` +
              "fix the database and mark it with `prisma migrate resolve` before migrating again",
          );
        }
        done.set(row.migration_name, row);
      }

      const applied: string[] = [];
      for (const migration of migrations) {
        const previous = done.get(migration.name);
        if (previous) {
          if (previous.checksum !== migration.checksum) {
            throw new Error(
              `migration ${migration.name} was changed after it was applied (checksum differs); ` +
                "add a new migration instead of editing an applied one",
            );
          }
          continue;
        }
        await applyOne(session, migration);
        applied.push(migration.name);
      }
      // Names in the table but not on disk are left alone: an older release starting during a
      // rolling deploy must not fail on migrations a newer one applied.
      return { applied };
    } finally {
      await session.query("SELECT pg_advisory_unlock($1)", [PRISMA_ADVISORY_LOCK_KEY]);
    }
  });
}

async function applyOne(session: Session, migration: LocalMigration): Promise<void> {
  try {
    await session.transaction(async (tx) => {
      const startedAt = new Date();
      await tx.exec(migration.script);
      await tx.query(
        `INSERT INTO "_prisma_migrations"
           (id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count)
         VALUES ($1, $2, clock_timestamp(), $3, NULL, NULL, $4, 1)`,
        [randomUUID(), migration.checksum, migration.name, startedAt],
      );
    });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`migration ${migration.name} failed and was rolled back: ${reason}`, {
      cause: err,
    });
  }
}

async function withSession<T>(driver: Driver, fn: (s: Session) => Promise<T>): Promise<T> {
  if (driver.kind === "pglite") {
    const { pglite } = driver;
    return fn({
      query: async <R>(sql: string, params?: unknown[]) =>
        (await pglite.query<R>(sql, params)).rows,
      transaction: async (body) => {
        await pglite.transaction(async (tx) => {
          await body({
            exec: async (script) => {
              await tx.exec(script);
            },
            query: (sql, params) => tx.query(sql, params),
          });
        });
      },
    });
  }
  const client = await driver.pool.connect();
  let failed = false;
  try {
    return await fn({
      query: async <R>(sql: string, params?: unknown[]) =>
        (await client.query(sql, params)).rows as R[],
      transaction: async (body) => {
        await client.query("BEGIN");
        try {
          // A parameterless query goes through the simple protocol, which runs many statements.
          await body({
            exec: async (script) => void (await client.query(script)),
            query: (sql, params) => client.query(sql, params),
          });
          await client.query("COMMIT");
        } catch (err) {
          await client.query("ROLLBACK");
          throw err;
        }
      },
    });
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    // After a failure the connection is closed rather than pooled: that also drops the
    // session's advisory lock should the unlock not have run.
    client.release(failed);
  }
}

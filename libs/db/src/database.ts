import { mkdir } from "node:fs/promises";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import { PrismaPGlite } from "pglite-prisma-adapter";
import { PrismaClient } from "./generated/prisma/client.ts";

export type Database = {
  prisma: PrismaClient;
  kind: "postgres" | "pglite";
  close(): Promise<void>;
};

export type DatabaseConfig = {
  /** Postgres connection string; unset means embedded PGlite under `${dataDir}/pglite`. */
  databaseUrl?: string;
  dataDir: string;
  /** Pool size for Postgres (default 10). */
  maxConnections?: number;
};

/**
 * The driver under a Database, for what Prisma's client cannot do: multi-statement scripts and
 * session-level advisory locks (the migration runner). Kept out of the public Database type.
 */
export type Driver = { kind: "postgres"; pool: pg.Pool } | { kind: "pglite"; pglite: PGlite };

const drivers = new WeakMap<Database, Driver>();

/** The pg pool under each Postgres client, for hot-path SQL without Prisma's runtime (sql.ts). */
const pools = new WeakMap<PrismaClient, pg.Pool>();

/** The pg pool a client opened by openDatabase() queries through; undefined for PGlite and transactions. */
export function poolOf(prisma: unknown): pg.Pool | undefined {
  return pools.get(prisma as PrismaClient);
}

export function driverOf(db: Database): Driver {
  const driver = drivers.get(db);
  if (!driver) throw new Error("not a Database opened by openDatabase()");
  return driver;
}

export async function openDatabase(cfg: DatabaseConfig): Promise<Database> {
  if (cfg.databaseUrl) return openPostgres(cfg.databaseUrl, cfg.maxConnections ?? 10);
  return openPglite(path.join(cfg.dataDir, "pglite"));
}

async function openPostgres(connectionString: string, max: number): Promise<Database> {
  // The pool is ours, not the adapter's, so close() can end it and tests that open and close
  // many databases leave no connections behind.
  const pool = new pg.Pool({ connectionString, max, idleTimeoutMillis: 10_000 });
  // An idle client dropped by the server (e.g. DROP DATABASE ... WITH (FORCE)) must not crash
  // the process; the next query gets a fresh connection.
  pool.on("error", () => {});
  const prisma = new PrismaClient({ adapter: new PrismaPg(pool) });
  let closed = false;
  const db: Database = {
    prisma,
    kind: "postgres",
    async close() {
      if (closed) return;
      closed = true;
      await prisma.$disconnect();
      await pool.end();
    },
  };
  drivers.set(db, { kind: "postgres", pool });
  pools.set(prisma, pool);
  return db;
}

async function openPglite(dir: string): Promise<Database> {
  await mkdir(dir, { recursive: true });
  const pglite = await PGlite.create(dir);
  const prisma = new PrismaClient({ adapter: new PrismaPGlite(pglite) });
  let closed = false;
  const db: Database = {
    prisma,
    kind: "pglite",
    async close() {
      if (closed) return;
      closed = true;
      await prisma.$disconnect();
      await pglite.close();
    },
  };
  drivers.set(db, { kind: "pglite", pglite });
  return db;
}

/**
 * Creates the database named in `databaseUrl` when the server has no such database yet, as
 * `prisma migrate deploy` does. Returns whether it created one. For entry points (migrate CLI,
 * npm start); connects to the server's `postgres` database to do it.
 */
export async function ensureDatabaseExists(databaseUrl: string): Promise<boolean> {
  const probe = new pg.Client({ connectionString: databaseUrl });
  try {
    await probe.connect();
    return false;
  } catch (err) {
    if ((err as { code?: string }).code !== "3D000") throw err; // invalid_catalog_name
  } finally {
    await probe.end().catch(() => {});
  }
  const url = new URL(databaseUrl);
  const name = decodeURIComponent(url.pathname.slice(1));
  url.pathname = "/postgres";
  const admin = new pg.Client({ connectionString: url.toString() });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
  } catch (err) {
    if ((err as { code?: string }).code !== "42P04") throw err; // created meanwhile by another start
  } finally {
    await admin.end();
  }
  return true;
}

// Prisma's own schema engine, as the wasm build on npm, driven through the pg driver adapter:
// computes migration SQL from prisma/schema.prisma and reads migration status as
// `prisma migrate status` does, without the native engine binary, which cannot be downloaded here (docs/decisions/0001-offline-migrations.md). Development tool only:
// services never load it.
import { randomBytes } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { PrismaPg } from "@prisma/adapter-pg";
import {
  bindMigrationAwareSqlAdapterFactory,
  type SqlDriverAdapter,
} from "@prisma/driver-adapter-utils";
import type {
  DiagnoseMigrationHistoryOutput,
  SchemaEngine,
} from "@prisma/schema-engine-wasm/schema_engine_bg";
import pg from "pg";
import { DEFAULT_MIGRATIONS_DIR } from "./migrate.ts";

export const DEFAULT_SCHEMA_PATH = fileURLToPath(
  new URL("../../../prisma/schema.prisma", import.meta.url),
);

type EngineModule = typeof import("@prisma/schema-engine-wasm/schema_engine_bg");

let engineModule: Promise<EngineModule> | undefined;

/** The package's entry imports the .wasm file bundler-style; Node needs it instantiated by hand. */
function loadEngine(): Promise<EngineModule> {
  engineModule ??= (async () => {
    const require = createRequire(import.meta.url);
    const bgPath = require.resolve("@prisma/schema-engine-wasm/schema_engine_bg");
    const bg: EngineModule = await import("@prisma/schema-engine-wasm/schema_engine_bg");
    const bytes = await readFile(path.join(path.dirname(bgPath), "schema_engine_bg.wasm"));
    const { instance } = await wasmApi().instantiate(bytes, { "./schema_engine_bg.js": bg });
    bg.__wbg_set_wasm(instance.exports as never);
    (instance.exports.__wbindgen_start as (() => void) | undefined)?.();
    return bg;
  })();
  return engineModule;
}

// The tsconfig's lib has no DOM, where TypeScript declares WebAssembly; Node has it at run time.
type WasmApi = {
  instantiate(
    bytes: Uint8Array,
    imports: object,
  ): Promise<{ instance: { exports: Record<string, unknown> } }>;
};
const wasmApi = () => (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

export type DiffOptions = {
  /** Start from nothing, or from the state the committed migrations produce. */
  from: "empty" | "migrations";
  /** A Postgres server where a throwaway shadow database can be created and dropped. */
  databaseUrl: string;
  schemaPath?: string;
  migrationsDir?: string;
};

/**
 * The SQL that takes the database from `from` to prisma/schema.prisma, exactly as
 * `prisma migrate diff --script` prints it; "" when there is nothing to do.
 */
export async function diffToSchema(opts: DiffOptions): Promise<string> {
  const schemaPath = opts.schemaPath ?? DEFAULT_SCHEMA_PATH;
  const schema = await readFile(schemaPath, "utf8");
  return withEngine(opts.databaseUrl, schemaPath, schema, async (engine) => {
    const from =
      opts.from === "empty"
        ? ({ tag: "empty" } as const)
        : ({
            tag: "migrations",
            ...(await migrationList(opts.migrationsDir ?? DEFAULT_MIGRATIONS_DIR)),
          } as const);
    const result = await engine.diff({
      from,
      to: { tag: "schemaDatamodel", files: [{ path: path.basename(schemaPath), content: schema }] },
      script: true,
      exitCode: true, // 2 when the diff is not empty
      filters: { externalTables: [], externalEnums: [] },
    });
    return result.exitCode === 2 ? (result.stdout ?? "") : "";
  });
}

export type MigrationStatus = DiagnoseMigrationHistoryOutput;

/**
 * What `prisma migrate status` reports for the database at `databaseUrl`: `history` is null when
 * every migration on disk is applied and nothing else is; edited and failed migrations by name.
 */
export async function migrationStatus(opts: {
  databaseUrl: string;
  migrationsDir?: string;
}): Promise<MigrationStatus> {
  const schema = await readFile(DEFAULT_SCHEMA_PATH, "utf8");
  return withEngine(opts.databaseUrl, DEFAULT_SCHEMA_PATH, schema, async (engine) =>
    engine.diagnoseMigrationHistory({
      migrationsList: await migrationList(opts.migrationsDir ?? DEFAULT_MIGRATIONS_DIR),
      optInToShadowDatabase: false,
      filters: { externalTables: [], externalEnums: [] },
    }),
  );
}

async function withEngine<T>(
  databaseUrl: string,
  schemaPath: string,
  schema: string,
  fn: (engine: SchemaEngine) => Promise<T>,
): Promise<T> {
  const { SchemaEngine } = await loadEngine();
  const adapters = new ShadowingPgFactory(databaseUrl);
  try {
    const engine = await SchemaEngine.new(
      { datamodels: [[path.basename(schemaPath), schema]] },
      () => {},
      bindMigrationAwareSqlAdapterFactory(adapters),
    );
    try {
      return await fn(engine);
    } finally {
      engine.free();
    }
  } finally {
    await adapters.disposeAll();
  }
}

async function migrationList(baseDir: string) {
  const entries = await readdir(baseDir, { withFileTypes: true });
  const names = entries
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
  const lockPath = path.join(baseDir, "migration_lock.toml");
  return {
    baseDir,
    lockfile: {
      path: "migration_lock.toml",
      content: await readFile(lockPath, "utf8").catch(() => null),
    },
    shadowDbInitScript: "",
    migrationDirectories: await Promise.all(
      names.map(async (name) => ({
        path: name,
        migrationFile: {
          path: "migration.sql",
          content: {
            tag: "ok" as const,
            value: await readFile(path.join(baseDir, name, "migration.sql"), "utf8"),
          },
        },
      })),
    ),
  };
}

/**
 * adapter-pg (7.10) maps no type to Postgres' one-byte "char" (oid 18), which the engine's
 * schema describer reads from pg_catalog (relkind, contype, ...), and fails on it. Reporting
 * such columns as text lets the adapter hand them over as the strings they are.
 */
class CharAsTextClient extends pg.Client {
  // biome-ignore lint/suspicious/noExplicitAny: pg's query() has many overloads; this passes all through
  override query(...args: any[]): any {
    const last = args.length - 1;
    if (typeof args[last] === "function") {
      // Callback form, which pg.Pool#query uses.
      const callback = args[last];
      args[last] = (err: Error | null, r: pg.QueryResult) => callback(err, err ? r : charAsText(r));
    }
    const result = (super.query as (...a: unknown[]) => unknown)(...args);
    return result instanceof Promise ? result.then(charAsText) : result;
  }
}

function charAsText(r: pg.QueryResult): pg.QueryResult {
  for (const field of r?.fields ?? []) if (field.dataTypeID === 18) field.dataTypeID = 25;
  return r;
}

async function adapterFor(url: string): Promise<SqlDriverAdapter> {
  const pool = new pg.Pool({ connectionString: url, max: 1, Client: CharAsTextClient });
  return new PrismaPg(pool, { disposeExternalPool: true }).connect();
}

/**
 * PrismaPg's own connectToShadowDb spreads `database` next to a connection string, which wins,
 * so the "shadow" is the main database; and it drops the shadow before closing its pool. This
 * factory makes a uniquely named database, closes its pool, then drops it WITH (FORCE).
 */
class ShadowingPgFactory {
  readonly provider = "postgres" as const;
  readonly adapterName = "@prisma/adapter-pg";
  private readonly opened: SqlDriverAdapter[] = [];

  constructor(private readonly url: string) {}

  async connect(): Promise<SqlDriverAdapter> {
    const adapter = await adapterFor(this.url);
    this.opened.push(adapter);
    return adapter;
  }

  async connectToShadowDb(): Promise<SqlDriverAdapter> {
    const name = `chatrl_shadow_${randomBytes(6).toString("hex")}`;
    await this.admin(`CREATE DATABASE "${name}"`);
    const shadowUrl = new URL(this.url);
    shadowUrl.pathname = `/${name}`;
    const adapter = await adapterFor(shadowUrl.toString());
    const dispose = adapter.dispose.bind(adapter);
    adapter.dispose = async () => {
      await dispose();
      await this.admin(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    };
    this.opened.push(adapter);
    return adapter;
  }

  /** Adapters the engine did not dispose of itself. Disposing twice is harmless. */
  async disposeAll(): Promise<void> {
    for (const adapter of this.opened.splice(0)) await adapter.dispose().catch(() => {});
  }

  private async admin(sql: string): Promise<void> {
    const client = new pg.Client({ connectionString: this.url });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  }
}

// Writes the next migration: the SQL that takes the committed migrations to the current
// prisma/schema.prisma, computed by Prisma's schema engine (wasm), into
// prisma/migrations/<UTC timestamp>_<name>/migration.sql, as `prisma migrate dev --create-only`
// would. `--check` writes nothing and exits 1 when schema and migrations differ.
//
//   npx tsx libs/db/src/new-migration-cli.ts add_run_priority
//   npx tsx libs/db/src/new-migration-cli.ts --check
//
// DATABASE_URL names a Postgres server where a throwaway shadow database may be created
// (default: the local server).
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { DEFAULT_MIGRATIONS_DIR } from "./migrate.ts";
import { diffToSchema } from "./schema-engine.ts";

async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const databaseUrl = env.DATABASE_URL || "postgresql://postgres@127.0.0.1:5432/postgres";
  const check = argv.includes("--check");
  const name = argv.find((a) => !a.startsWith("--"));
  if (!check && !name) {
    console.error("usage: new-migration-cli.ts <name> | --check");
    return 2;
  }
  if (name && !/^[a-z0-9_]+$/.test(name)) {
    console.error(`migration name must be lowercase letters, digits and _, got "${name}"`);
    return 2;
  }
  const sql = await diffToSchema({ from: "migrations", databaseUrl });
  if (sql === "") {
    console.log("prisma/schema.prisma and prisma/migrations agree; nothing to write");
    return 0;
  }
  if (check) {
    console.error("prisma/schema.prisma has changes no migration makes:\n");
    console.error(sql);
    return 1;
  }
  const stamp = new Date().toISOString().replace(/\D/g, "").slice(0, 14); // YYYYMMDDHHMMSS, UTC
  const dir = path.join(DEFAULT_MIGRATIONS_DIR, `${stamp}_${name}`);
  await mkdir(dir);
  await writeFile(path.join(dir, "migration.sql"), sql);
  console.log(`wrote ${path.relative(process.cwd(), path.join(dir, "migration.sql"))}:\n\n${sql}`);
  return 0;
}

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(`new-migration failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  },
);

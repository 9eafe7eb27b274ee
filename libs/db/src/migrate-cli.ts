// `npm run migrate`: applies pending migrations to DATABASE_URL (creating that database when the
// server has none of that name), or to the embedded PGlite database under CHATRL_DATA_DIR
// (default ./data) when DATABASE_URL is unset. Prints what it applied.
import { ensureDatabaseExists, openDatabase } from "./database.ts";
import { migrate } from "./migrate.ts";

async function main(env: NodeJS.ProcessEnv): Promise<void> {
  const databaseUrl = env.DATABASE_URL || undefined;
  const dataDir = env.CHATRL_DATA_DIR || "./data";
  if (databaseUrl && (await ensureDatabaseExists(databaseUrl))) {
    console.log(`created database ${new URL(databaseUrl).pathname.slice(1)}`);
  }
  const db = await openDatabase({ databaseUrl, dataDir, maxConnections: 1 });
  try {
    const target =
      db.kind === "postgres" ? "Postgres (DATABASE_URL)" : `PGlite in ${dataDir}/pglite`;
    const { applied } = await migrate(db);
    if (applied.length === 0) console.log(`${target}: already up to date`);
    for (const name of applied) console.log(`${target}: applied ${name}`);
  } finally {
    await db.close();
  }
}

main(process.env).catch((err: unknown) => {
  console.error(`migrate failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});

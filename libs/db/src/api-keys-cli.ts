// `npm run api-keys -- create NAME | list | delete ID`: API keys kept in Postgres (DATABASE_URL),
// or in the embedded PGlite database under CHATRL_DATA_DIR (stop `npm start` first: PGlite has
// one process at a time). A created key is printed once; only its sha256 is stored. The first
// stored key makes the api and inference services require a key.
import { createApiKey, deleteApiKey, listApiKeys } from "./api-keys.ts";
import { openDatabase } from "./database.ts";
import { migrate } from "./migrate.ts";

const USAGE = "usage: npm run api-keys -- create NAME | list | delete ID";

async function main(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [command, arg] = args;
  if (!["create", "list", "delete"].includes(command) || (command !== "list" && !arg)) {
    console.error(USAGE);
    return 2;
  }
  const dataDir = env.CHATRL_DATA_DIR || "./data";
  const db = await openDatabase({ databaseUrl: env.DATABASE_URL || undefined, dataDir });
  try {
    await migrate(db);
    const p = db.prisma;
    if (command === "create") {
      const created = await createApiKey(p, arg);
      console.log(`${created.id} ${created.name}: ${created.key}`);
      console.log("Keep the key now: it is not stored and cannot be shown again.");
    } else if (command === "list") {
      for (const k of await listApiKeys(p)) {
        console.log(`${k.id} ${k.name} created ${k.createdAt.toISOString()}`);
      }
    } else if (!(await deleteApiKey(p, arg))) {
      console.error(`no API key with id '${arg}'`);
      return 1;
    }
    return 0;
  } finally {
    await db.close();
  }
}

main(process.argv.slice(2), process.env).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(`api-keys failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  },
);

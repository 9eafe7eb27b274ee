// What the worker's reconciler reads (Postgres is the truth about runs; Redis only dispatches
// them) and the lock that lets one replica at a time reconcile.
import { type Database, driverOf } from "./database.ts";
import { type Db, type RunWithStages, stagesInOrder, toRunWithStages } from "./rows.ts";

/**
 * Runs that are not finished and have a stage queued or running, created before
 * `createdBefore` (younger runs may still be on their way into the queue), oldest first.
 */
export async function unfinishedRuns(
  p: Db,
  opts: { createdBefore: Date; limit?: number },
): Promise<RunWithStages[]> {
  const runs = await p.run.findMany({
    where: {
      status: { in: ["queued", "running"] },
      createdAt: { lt: opts.createdBefore },
      stages: { some: { status: { in: ["queued", "running"] } } },
    },
    orderBy: [{ createdAt: "asc" }, { id: "asc" }],
    take: opts.limit ?? 500,
    include: { stages: stagesInOrder },
  });
  return runs.map(toRunWithStages);
}

/**
 * Runs `fn` while holding the Postgres advisory lock named `name`, unless another session
 * (another replica) holds it: then resolves `{ locked: false }` at once without running `fn`.
 * The lock is a session lock on one pooled connection, released when `fn` settles (or by
 * Postgres when that connection dies). Embedded PGlite has one process and one connection:
 * `fn` simply runs.
 */
export async function withAdvisoryLock<T>(
  db: Database,
  name: string,
  fn: () => Promise<T>,
): Promise<{ locked: true; value: T } | { locked: false }> {
  const driver = driverOf(db);
  if (driver.kind === "pglite") return { locked: true, value: await fn() };
  const client = await driver.pool.connect();
  // A connection whose lock query or unlock failed must not go back to the pool (it might
  // still hold the lock); release(error) discards it.
  let broken: Error | undefined;
  try {
    const { rows } = await client
      .query<{ locked: boolean }>(
        "SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS locked",
        [name],
      )
      .catch((error: Error) => {
        broken = error;
        throw error;
      });
    if (!rows[0]?.locked) return { locked: false };
    try {
      return { locked: true, value: await fn() };
    } finally {
      await client
        .query("SELECT pg_advisory_unlock(hashtextextended($1, 0))", [name])
        .catch((error: Error) => {
          broken = error;
        });
    }
  } finally {
    client.release(broken);
  }
}

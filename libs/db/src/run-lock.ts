import type { Run, Status } from "./generated/prisma/client.ts";
import type { Tx } from "./rows.ts";

/**
 * Locks the run's row until the transaction ends (SELECT ... FOR UPDATE) and returns it, or
 * null if there is no such run. Every change that derives a run's status from its stages takes
 * this lock first, so concurrent workers and user cancels serialise per run.
 */
export async function lockRun(tx: Tx, id: string): Promise<Run | null> {
  const locked = await tx.$queryRaw<
    { id: string }[]
  >`SELECT id FROM "run" WHERE id = ${id} FOR UPDATE`;
  if (locked.length === 0) return null;
  return tx.run.findUnique({ where: { id } });
}

export function isFinal(status: Status): boolean {
  return status === "succeeded" || status === "failed" || status === "cancelled";
}

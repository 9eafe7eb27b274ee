// Hot-path SQL without Prisma's runtime. A profile of GET /v1/runs/{id} and POST /v1/runs had
// Prisma's query compiler and result mapping as the biggest cost after waiting; a statement
// sent straight to the pg pool the adapter already uses costs a fraction. Statements here
// return JSON built by Postgres (json_build_object), so pg and Prisma ($queryRawUnsafe: PGlite,
// or a transaction client) hand back the same values, and rows.ts maps them to the shapes
// Prisma's queries return.
import type { Prisma } from "./generated/prisma/client.ts";
import { poolOf } from "./database.ts";
import type { Db, Tx } from "./rows.ts";

/** A statement with $1.. placeholders; a name makes it a prepared statement on pg connections. */
export type Statement = { name?: string; text: string };

/**
 * Runs one statement and returns its rows: through the client's pg pool when it has one (a
 * named statement is parsed and planned once per connection, not per call), else through
 * Prisma (PGlite, or inside a transaction).
 */
export async function queryRows<T>(
  p: Db | Tx,
  statement: Statement,
  values: unknown[],
): Promise<T[]> {
  const pool = poolOf(p);
  if (pool) return (await pool.query({ ...statement, values })).rows as T[];
  return (p as Prisma.TransactionClient).$queryRawUnsafe<T[]>(statement.text, ...values);
}

/** A timestamptz column as milliseconds since the epoch (null stays null), for JSON. */
export function epochMs(column: string): string {
  return `(extract(epoch from ${column}) * 1000)::float8`;
}

/** Milliseconds since the epoch back to a Date (null stays null). */
export function toDate(ms: number | null): Date | null {
  return ms === null ? null : new Date(ms);
}

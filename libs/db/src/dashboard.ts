import { Prisma } from "./generated/prisma/client.ts";
import type { Db } from "./rows.ts";

export type CostGroup = "run" | "stage" | "day";

export type CostRow = {
  /** Run id, stage kind, or day as YYYY-MM-DD (UTC). */
  key: string;
  runs: number;
  stages: number;
  wallSeconds: number;
  deviceSeconds: number;
  tokens: number;
  costUsd: number;
};

// Each grouping: the key expression and the order of the rows.
const GROUPS: Record<CostGroup, { key: Prisma.Sql; order: Prisma.Sql }> = {
  run: { key: Prisma.sql`r.id`, order: Prisma.sql`MAX(r.created_at) DESC, key DESC` },
  stage: { key: Prisma.sql`s.kind::text`, order: Prisma.sql`MIN(s.kind) ASC` },
  day: {
    key: Prisma.sql`to_char(date_trunc('day', s.started_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')`,
    order: Prisma.sql`key ASC`,
  },
};

/** Time and money spent, summed over stages that have started, grouped by run, stage kind or day. */
export async function costSummary(p: Db, groupBy: CostGroup): Promise<CostRow[]> {
  const group = GROUPS[groupBy];
  if (!group) throw new RangeError(`groupBy must be run, stage or day, got ${groupBy}`);
  const rows = await p.$queryRaw<CostRow[]>`
    SELECT ${group.key} AS key,
           COUNT(DISTINCT s.run_id)::int AS runs,
           COUNT(*)::int AS stages,
           COALESCE(SUM(s.wall_seconds), 0)::float8 AS "wallSeconds",
           COALESCE(SUM(s.device_seconds), 0)::float8 AS "deviceSeconds",
           COALESCE(SUM(s.tokens), 0)::float8 AS tokens,
           COALESCE(SUM(s.cost_usd), 0)::float8 AS "costUsd"
    FROM "stage" s JOIN "run" r ON r.id = s.run_id
    WHERE s.started_at IS NOT NULL
    GROUP BY 1
    ORDER BY ${group.order}`;
  return rows.map((r) => ({
    key: r.key,
    runs: Number(r.runs),
    stages: Number(r.stages),
    wallSeconds: Number(r.wallSeconds),
    deviceSeconds: Number(r.deviceSeconds),
    tokens: Number(r.tokens),
    costUsd: Number(r.costUsd),
  }));
}

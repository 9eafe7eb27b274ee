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

/** UTC days, `YYYY-MM-DD`, both ends included; either may be absent. */
export type DayRange = { from?: string; to?: string };

const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** The SQL condition "the stage started within the range" (true without bounds). */
export function startedWithin(range: DayRange = {}): Prisma.Sql {
  const parts = [Prisma.sql`s.started_at IS NOT NULL`];
  for (const [name, day] of Object.entries(range)) {
    if (day === undefined) continue;
    if (!DAY.test(day) || Number.isNaN(Date.parse(`${day}T00:00:00Z`))) {
      throw new RangeError(`${name} must be a day as YYYY-MM-DD, got ${day}`);
    }
  }
  if (range.from) parts.push(Prisma.sql`s.started_at >= ${range.from}::date AT TIME ZONE 'UTC'`);
  if (range.to) {
    parts.push(Prisma.sql`s.started_at < (${range.to}::date + 1) AT TIME ZONE 'UTC'`);
  }
  return Prisma.join(parts, " AND ");
}

/**
 * Time and money spent, summed over stages that have started (within `range`, by the day each
 * started), grouped by run, stage kind or day.
 */
export async function costSummary(
  p: Db,
  groupBy: CostGroup,
  range: DayRange = {},
): Promise<CostRow[]> {
  const group = GROUPS[groupBy];
  if (!group) throw new RangeError(`groupBy must be run, stage or day, got ${groupBy}`);
  const where = startedWithin(range);
  const rows = await p.$queryRaw<CostRow[]>`
    SELECT ${group.key} AS key,
           COUNT(DISTINCT s.run_id)::int AS runs,
           COUNT(*)::int AS stages,
           COALESCE(SUM(s.wall_seconds), 0)::float8 AS "wallSeconds",
           COALESCE(SUM(s.device_seconds), 0)::float8 AS "deviceSeconds",
           COALESCE(SUM(s.tokens), 0)::float8 AS tokens,
           COALESCE(SUM(s.cost_usd), 0)::float8 AS "costUsd"
    FROM "stage" s JOIN "run" r ON r.id = s.run_id
    WHERE ${where}
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

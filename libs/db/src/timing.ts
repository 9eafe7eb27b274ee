// Where the time went: queue wait, wall and device seconds, tokens, and the per-step phases a
// trainer reports (PPO's generation, scoring and training), per stage and summed per run, stage
// kind or day. Everything is derived from rows the api and worker already write:
// - a stage is ready to run when its run was created, except a PPO stage whose parents are in
//   the same run: BullMQ releases it when the last of them finishes; queue wait is from ready to
//   the stage's first start;
// - the worker writes each phase as the metric `time_<phase>_s`, seconds per step averaged over
//   the steps since its previous report, so a phase's total is the sum of value x steps covered.
import { type CostGroup, type DayRange, startedWithin } from "./dashboard.ts";
import { Prisma, type StageKind, type Status } from "./generated/prisma/client.ts";
import type { Db } from "./rows.ts";

/** Seconds by phase name (`generation`, `scoring`, `training` for PPO; none for SFT, reward). */
export type PhaseSeconds = Record<string, number>;

export type StageTiming = {
  stageId: string;
  kind: StageKind;
  status: Status;
  step: number;
  /** When the stage could start: its run's creation, or a PPO stage's last parent's finish. */
  readyAt: Date | null;
  startedAt: Date | null;
  finishedAt: Date | null;
  /** From ready to the first start; null until the stage starts. */
  queueWaitSeconds: number | null;
  wallSeconds: number;
  deviceSeconds: number;
  tokens: number;
  /** Tokens per device second (0 before any). */
  tokensPerSecond: number;
  costUsd: number;
  phaseSeconds: PhaseSeconds;
};

export type TimeRow = {
  key: string;
  runs: number;
  stages: number;
  /** Summed over the rows' stages that have started. */
  queueWaitSeconds: number;
  wallSeconds: number;
  deviceSeconds: number;
  tokens: number;
  tokensPerSecond: number;
  costUsd: number;
  phaseSeconds: PhaseSeconds;
};

export type TimeFilter = DayRange & { runId?: string };

/** The per-stage figures as one SQL relation, for the stages `where` keeps (alias `s`). */
function stageTimes(where: Prisma.Sql): Prisma.Sql {
  return Prisma.sql`
    WITH ready AS (
      SELECT s.id,
             CASE WHEN s.kind = 'ppo'
               THEN GREATEST(r.created_at,
                 (SELECT MAX(p.finished_at) FROM "stage" p
                   WHERE p.run_id = s.run_id AND p.kind <> 'ppo'))
               ELSE r.created_at END AS ready_at
      FROM "stage" s JOIN "run" r ON r.id = s.run_id
      WHERE ${where}
    ),
    steps AS (
      SELECT m.stage_id, substring(m.name FROM '^time_(.*)_s$') AS phase, m.value,
             GREATEST(m.step - COALESCE(LAG(m.step) OVER (
               PARTITION BY m.stage_id, m.name ORDER BY m.id), 0), 0) AS covered
      FROM "metric" m JOIN ready ON ready.id = m.stage_id
      WHERE m.name LIKE 'time\\_%\\_s'
    ),
    phases AS (
      SELECT stage_id, jsonb_object_agg(phase, seconds) AS phase_seconds
      FROM (SELECT stage_id, phase, SUM(value * covered)::float8 AS seconds
            FROM steps GROUP BY stage_id, phase) per_phase
      GROUP BY stage_id
    )
    SELECT s.id AS "stageId", s.run_id AS "runId", s.kind, s.status, s.step,
           ready.ready_at AS "readyAt", s.started_at AS "startedAt",
           s.finished_at AS "finishedAt",
           EXTRACT(EPOCH FROM (s.started_at - ready.ready_at))::float8 AS "queueWaitSeconds",
           s.wall_seconds AS "wallSeconds", s.device_seconds AS "deviceSeconds",
           s.tokens::float8 AS tokens, s.cost_usd AS "costUsd",
           COALESCE(phases.phase_seconds, '{}'::jsonb) AS "phaseSeconds"
    FROM "stage" s JOIN ready ON ready.id = s.id
    LEFT JOIN phases ON phases.stage_id = s.id`;
}

type StageTimeRow = Omit<StageTiming, "tokensPerSecond"> & { runId: string };

const perDeviceSecond = (tokens: number, seconds: number) => (seconds > 0 ? tokens / seconds : 0);

/** Each stage of a run, in pipeline order (sft, reward, ppo); [] for an unknown run. */
export async function stageTimings(p: Db, runId: string): Promise<StageTiming[]> {
  const rows = await p.$queryRaw<StageTimeRow[]>`
    ${stageTimes(Prisma.sql`s.run_id = ${runId}`)}
    ORDER BY s.kind`;
  return rows.map(({ runId: _run, ...row }) => ({
    ...row,
    queueWaitSeconds: row.queueWaitSeconds === null ? null : Math.max(0, row.queueWaitSeconds),
    tokens: Number(row.tokens),
    tokensPerSecond: perDeviceSecond(Number(row.tokens), row.deviceSeconds),
  }));
}

const PIPELINE = ["sft", "reward", "ppo"];
const DAY_OF = (d: Date) => d.toISOString().slice(0, 10);
const KEYS: Record<CostGroup, (row: StageTimeRow & { createdAt: Date }) => string> = {
  run: (row) => row.runId,
  stage: (row) => row.kind,
  day: (row) => DAY_OF(row.startedAt as Date),
};

/**
 * Time summed over stages that have started (within the day range, by the day each started;
 * only `runId`'s when given), grouped by run (newest run first), stage kind (pipeline order) or
 * UTC day of the stage's start (ascending), as costSummary groups.
 */
export async function timeSummary(
  p: Db,
  groupBy: CostGroup,
  filter: TimeFilter = {},
): Promise<TimeRow[]> {
  const keyOf = KEYS[groupBy];
  if (!keyOf) throw new RangeError(`groupBy must be run, stage or day, got ${groupBy}`);
  const { runId, ...range } = filter;
  const where = runId
    ? Prisma.sql`${startedWithin(range)} AND s.run_id = ${runId}`
    : startedWithin(range);
  const rows = await p.$queryRaw<(StageTimeRow & { createdAt: Date })[]>`
    SELECT t.*, r.created_at AS "createdAt" FROM (${stageTimes(where)}) t
    JOIN "run" r ON r.id = t."runId"
    ORDER BY r.created_at DESC, t."runId" DESC, t.kind ASC`;
  const groups = new Map<string, TimeRow & { runIds: Set<string> }>();
  for (const row of rows) {
    const key = keyOf(row);
    let group = groups.get(key);
    if (!group) {
      group = {
        key,
        runs: 0,
        stages: 0,
        queueWaitSeconds: 0,
        wallSeconds: 0,
        deviceSeconds: 0,
        tokens: 0,
        tokensPerSecond: 0,
        costUsd: 0,
        phaseSeconds: {},
        runIds: new Set(),
      };
      groups.set(key, group);
    }
    group.runIds.add(row.runId);
    group.stages += 1;
    group.queueWaitSeconds += Math.max(0, row.queueWaitSeconds ?? 0);
    group.wallSeconds += row.wallSeconds;
    group.deviceSeconds += row.deviceSeconds;
    group.tokens += Number(row.tokens);
    group.costUsd += row.costUsd;
    for (const [phase, seconds] of Object.entries(row.phaseSeconds)) {
      group.phaseSeconds[phase] = (group.phaseSeconds[phase] ?? 0) + seconds;
    }
  }
  const out = [...groups.values()].map(({ runIds, ...group }) => ({
    ...group,
    runs: runIds.size,
    tokensPerSecond: perDeviceSecond(group.tokens, group.deviceSeconds),
  }));
  if (groupBy === "day") out.sort((a, b) => a.key.localeCompare(b.key));
  if (groupBy === "stage") out.sort((a, b) => PIPELINE.indexOf(a.key) - PIPELINE.indexOf(b.key));
  return out;
}

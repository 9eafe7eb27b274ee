// Shapes returned to callers: Prisma rows with BigInt columns turned into numbers, so they can be
// JSON-serialised and compared without BigInt handling anywhere outside libs/db.
import type { Prisma, PrismaClient, Run, Stage } from "./generated/prisma/client.ts";
import { epochMs, toDate } from "./sql.ts";

/** The client repositories take; a transaction client works for functions that do not open one. */
export type Db = PrismaClient;
export type Tx = Prisma.TransactionClient;

/** A stage's final figures, name -> number (`{}` until the worker records some). */
export type StageSummary = Record<string, number>;
export type StageRow = Omit<Stage, "tokens" | "summary"> & {
  tokens: number;
  summary: StageSummary;
};
export type RunWithStages = Run & { stages: StageRow[] };

export type Page<T> = { data: T[]; hasMore: boolean };
export type PageQuery<C = string> = { after?: C; limit: number };

export function toStageRow(stage: Stage): StageRow {
  return { ...stage, tokens: Number(stage.tokens), summary: toSummary(stage.summary) };
}

/** The stored JSON object as numbers by name (anything else, never written by finishStage, is left out). */
function toSummary(value: Prisma.JsonValue): StageSummary {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return {};
  const summary: StageSummary = {};
  for (const [name, v] of Object.entries(value)) if (typeof v === "number") summary[name] = v;
  return summary;
}

export function toRunWithStages(run: Run & { stages: Stage[] }): RunWithStages {
  return { ...run, stages: run.stages.map(toStageRow) };
}

/** Stages in pipeline order (the enum's declaration order: sft, reward, ppo). */
export const stagesInOrder = { orderBy: { kind: "asc" } } as const;

/** Fetches `limit + 1` rows to learn whether another page follows. */
export function toPage<T>(rows: T[], limit: number): Page<T> {
  return { data: rows.slice(0, limit), hasMore: rows.length > limit };
}

export function checkLimit(limit: number): void {
  if (!Number.isInteger(limit) || limit < 1) {
    throw new RangeError(`limit must be a positive integer, got ${limit}`);
  }
}

/**
 * A stage row as JSON built by Postgres (sql.ts), with the keys and values Prisma gives:
 * timestamps as epoch milliseconds, tokens as a number.
 */
export function stageJsonSql(s: string): string {
  return `json_build_object(
    'id', ${s}.id, 'runId', ${s}.run_id, 'kind', ${s}.kind, 'status', ${s}.status,
    'progress', ${s}.progress, 'step', ${s}.step, 'maxSteps', ${s}.max_steps,
    'startedAt', ${epochMs(`${s}.started_at`)}, 'finishedAt', ${epochMs(`${s}.finished_at`)},
    'wallSeconds', ${s}.wall_seconds, 'deviceSeconds', ${s}.device_seconds,
    'tokens', ${s}.tokens::float8, 'costUsd', ${s}.cost_usd, 'device', ${s}.device,
    'error', ${s}.error, 'examplesTruncated', ${s}.examples_truncated,
    'examplesDropped', ${s}.examples_dropped, 'summary', ${s}.summary)`;
}

/**
 * A run row as JSON built by Postgres with its stages in pipeline order under `stages`:
 * `stages` is SQL giving the run's stage rows as `alias` (a table, or a CTE of inserted rows).
 */
export function runJsonSql(r: string, stages: { from: string; alias: string }): string {
  const s = stages.alias;
  return `json_build_object(
    'id', ${r}.id, 'name', ${r}.name, 'status', ${r}.status, 'spec', ${r}.spec,
    'idempotencyKey', ${r}.idempotency_key, 'error', ${r}.error, 'warnings', to_json(${r}.warnings),
    'createdAt', ${epochMs(`${r}.created_at`)}, 'startedAt', ${epochMs(`${r}.started_at`)},
    'finishedAt', ${epochMs(`${r}.finished_at`)},
    'stages', COALESCE(
      (SELECT json_agg(${stageJsonSql(s)} ORDER BY ${s}.kind) FROM ${stages.from} ${s}
        WHERE ${s}.run_id = ${r}.id),
      '[]'::json))`;
}

type Timestamps<T, K extends keyof T> = Omit<T, K> & { [k in K]: number | null };
type StageJson = Timestamps<StageRow, "startedAt" | "finishedAt">;
export type RunJson = Timestamps<Run, "createdAt" | "startedAt" | "finishedAt"> & {
  stages: StageJson[];
};

/** What runJsonSql built, as getRun's Prisma query returned it. */
export function fromRunJson(run: RunJson): RunWithStages {
  return {
    id: run.id,
    name: run.name,
    status: run.status,
    spec: run.spec,
    idempotencyKey: run.idempotencyKey,
    error: run.error,
    warnings: run.warnings ?? [],
    createdAt: toDate(run.createdAt) as Date,
    startedAt: toDate(run.startedAt),
    finishedAt: toDate(run.finishedAt),
    stages: run.stages.map((stage) => ({
      ...stage,
      startedAt: toDate(stage.startedAt),
      finishedAt: toDate(stage.finishedAt),
      summary: toSummary(stage.summary),
    })),
  };
}

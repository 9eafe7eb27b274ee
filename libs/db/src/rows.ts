// Shapes returned to callers: Prisma rows with BigInt columns turned into numbers, so they can be
// JSON-serialised and compared without BigInt handling anywhere outside libs/db.
import type { Prisma, PrismaClient, Run, Stage } from "./generated/prisma/client.ts";

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

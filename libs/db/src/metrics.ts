import type { StageKind } from "./generated/prisma/client.ts";
import type { Db } from "./rows.ts";

export type MetricRow = {
  id: number;
  stageId: string;
  stageKind: StageKind;
  step: number;
  name: string;
  value: number;
  time: Date;
};

/**
 * One row per name at `step`. Values must be finite: JSON cannot carry NaN or Infinity. A name
 * already recorded at that step keeps its first value (a step redone after a resume, or reported
 * by a worker that lost its job, is not counted twice); returns how many rows were new.
 */
export async function addMetrics(
  p: Db,
  stageId: string,
  step: number,
  values: Record<string, number>,
): Promise<number> {
  const entries = Object.entries(values);
  for (const [name, value] of entries) {
    if (!Number.isFinite(value)) throw new RangeError(`metric ${name} at step ${step} is ${value}`);
  }
  const { count } = await p.metric.createMany({
    data: entries.map(([name, value]) => ({ stageId, step, name, value })),
    skipDuplicates: true,
  });
  return count;
}

/** A run's metrics in the order they were written, optionally one stage kind or one name. */
export async function listMetrics(
  p: Db,
  runId: string,
  filter: { stage?: StageKind; name?: string } = {},
): Promise<MetricRow[]> {
  const rows = await p.metric.findMany({
    where: {
      stage: { runId, ...(filter.stage ? { kind: filter.stage } : {}) },
      ...(filter.name ? { name: filter.name } : {}),
    },
    orderBy: { id: "asc" },
    include: { stage: { select: { kind: true } } },
  });
  return rows.map(({ stage, id, ...row }) => ({ ...row, id: Number(id), stageKind: stage.kind }));
}

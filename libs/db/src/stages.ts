import type { StageKind, Status } from "./generated/prisma/client.ts";
import { isFinal, lockRun } from "./run-lock.ts";
import {
  type Db,
  type RunWithStages,
  type StageRow,
  type StageSummary,
  stagesInOrder,
  toRunWithStages,
  toStageRow,
} from "./rows.ts";

export async function getStage(p: Db, id: string): Promise<StageRow | null> {
  const stage = await p.stage.findUnique({ where: { id } });
  return stage && toStageRow(stage);
}

/** The run's stage of that kind (a run has at most one of each), or null. */
export async function getStageByRunAndKind(
  p: Db,
  runId: string,
  kind: StageKind,
): Promise<StageRow | null> {
  const stage = await p.stage.findUnique({ where: { runId_kind: { runId, kind } } });
  return stage && toStageRow(stage);
}

/**
 * Marks a queued stage running on `device` and its run running. A stage that is no longer
 * queued or running (cancelled meanwhile) is returned unchanged, so the worker sees why to stop.
 * Starting a running stage again (a resumed job) keeps its first startedAt.
 */
export async function startStage(p: Db, id: string, device: string): Promise<StageRow> {
  return p.$transaction(async (tx) => {
    const { runId } = await tx.stage.findUniqueOrThrow({ where: { id }, select: { runId: true } });
    // Run row first, like cancelRun and finishStage: one lock order, no deadlocks, and a
    // cancel that lands first is seen by the conditional update below.
    await lockRun(tx, runId);
    const now = new Date();
    const { count } = await tx.stage.updateMany({
      where: { id, status: { in: ["queued", "running"] } },
      data: { status: "running", device },
    });
    if (count === 1) {
      await tx.stage.updateMany({ where: { id, startedAt: null }, data: { startedAt: now } });
    }
    const stage = await tx.stage.findUniqueOrThrow({ where: { id } });
    if (count === 1) {
      await tx.run.updateMany({
        where: { id: runId, status: "queued" },
        data: { status: "running", startedAt: now },
      });
    }
    return toStageRow(stage);
  });
}

export type StageProgress = {
  step: number;
  /** The steps the stage will take when known to differ from the requested max (epochs end it sooner). */
  maxSteps?: number;
  progress: number;
  wallSeconds: number;
  deviceSeconds: number;
  tokens: number;
  costUsd: number;
};

/** Records the totals so far (not increments). */
export async function recordStageProgress(
  p: Db,
  id: string,
  progress: StageProgress,
): Promise<StageRow> {
  const stage = await p.stage.update({
    where: { id },
    data: { ...progress, tokens: BigInt(Math.round(progress.tokens)) },
  });
  return toStageRow(stage);
}

export type StageData = {
  /** Examples longer than the stage's sequence length whose ends were cut. */
  examplesTruncated: number;
  /** Examples left out because their prompt alone did not fit. */
  examplesDropped: number;
};

/** Records what tokenizing the stage's data cut and dropped (totals, not increments). */
export async function recordStageData(p: Db, stageId: string, data: StageData): Promise<StageRow> {
  for (const [name, value] of Object.entries(data)) {
    if (!Number.isInteger(value) || value < 0) {
      throw new RangeError(`${name} must be a non-negative integer, got ${value}`);
    }
  }
  const stage = await p.stage.update({
    where: { id: stageId },
    data: { examplesTruncated: data.examplesTruncated, examplesDropped: data.examplesDropped },
  });
  return toStageRow(stage);
}

export type StageOutcome = {
  status: "succeeded" | "failed" | "cancelled";
  error?: string;
  /** The stage's final figures (reward accuracy and scores, PPO reward and KL); kept when absent. */
  summary?: StageSummary;
};

/**
 * Finishes a stage and derives its run's status from all stages: failed if any failed, else
 * cancelled if any was cancelled, else succeeded once all succeeded; otherwise it stays running.
 * A run that is already final (cancelled by a user, failed to queue) keeps its status.
 * A summary value that is not a finite number is a RangeError naming it, and nothing is stored.
 */
export async function finishStage(
  p: Db,
  id: string,
  outcome: StageOutcome,
): Promise<{ stage: StageRow; run: RunWithStages }> {
  for (const [name, value] of Object.entries(outcome.summary ?? {})) {
    // JSON has no NaN or Infinity: Postgres would store null.
    if (typeof value !== "number" || !Number.isFinite(value)) {
      throw new RangeError(`summary ${name} must be a finite number, got ${value}`);
    }
  }
  return p.$transaction(async (tx) => {
    const { runId } = await tx.stage.findUniqueOrThrow({ where: { id }, select: { runId: true } });
    // Stages of one run finish on different workers, and users cancel runs meanwhile; the row
    // lock makes each derivation see the others' committed results.
    const run = await lockRun(tx, runId);
    if (!run) throw new Error(`run ${runId} of stage ${id} not found`); // the foreign key forbids this
    const now = new Date();
    const stage = await tx.stage.update({
      where: { id },
      data: {
        status: outcome.status,
        error: outcome.error ?? null,
        finishedAt: now,
        ...(outcome.summary ? { summary: outcome.summary } : {}),
      },
    });
    if (outcome.status === "failed") {
      // Why, in the run's events, in the same transaction: no reader sees the failure without it.
      await tx.runEvent.create({
        data: {
          runId,
          level: "error",
          message: `${stage.kind} stage failed: ${outcome.error ?? "unknown error"}`,
        },
      });
      // The run cannot succeed any more: its other stages stop (a running one at its next step,
      // as on cancel) instead of training for nothing or waiting forever for a failed parent.
      await tx.stage.updateMany({
        where: { runId, id: { not: id }, status: { in: ["queued", "running"] } },
        data: {
          status: "cancelled",
          error: `not finished: the ${stage.kind} stage failed`,
          finishedAt: now,
        },
      });
    }
    const stages = await tx.stage.findMany({ where: { runId }, ...stagesInOrder });
    const failed = stages.find((s) => s.status === "failed");
    const derived: Status = failed
      ? "failed"
      : stages.some((s) => s.status === "cancelled")
        ? "cancelled"
        : stages.every((s) => s.status === "succeeded")
          ? "succeeded"
          : "running";
    const alreadyFinal = isFinal(run.status);
    const status = alreadyFinal ? run.status : derived;
    const updated = await tx.run.update({
      where: { id: runId },
      data: {
        status,
        error:
          !alreadyFinal && failed
            ? `${failed.kind} stage failed: ${failed.error ?? "unknown error"}`
            : run.error,
        finishedAt: isFinal(status) ? (run.finishedAt ?? now) : null,
      },
      include: { stages: stagesInOrder },
    });
    return { stage: toStageRow(stage), run: toRunWithStages(updated) };
  });
}

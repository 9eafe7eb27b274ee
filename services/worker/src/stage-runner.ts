// The BullMQ processor for every stage queue: find the stage, mark it running, hand it to the
// processor of its kind, and turn a failure into a failed stage that is not retried.
import type { RunSpec } from "@chatrl/contracts";
import { addEvent, finishStage, getRun, getStage, startStage } from "@chatrl/db";
import type { StageJobData } from "@chatrl/queue";
import { DelayedError, UnrecoverableError } from "bullmq";
import { handBackJob } from "./hand-back.ts";
import { implementedKinds } from "./processors.ts";
import { runStageLoop } from "./stage-loop.ts";
import type { StageContext, StageJob, StageResult } from "./types.ts";

export async function runStage(
  ctx: StageContext,
  job: StageJob,
  token?: string,
  signal?: AbortSignal,
): Promise<StageResult> {
  const { prisma } = ctx;
  const { stageId, runId, kind } = job.data;
  // Aborted while waiting for the device (the worker is closing): give the job back untouched.
  if (signal?.aborted) return handBackJob(job, token, signal);
  const stage = await getStage(prisma, stageId);
  if (!stage) throw new UnrecoverableError(`stage ${stageId} does not exist`);
  if (stage.kind !== kind) {
    throw new UnrecoverableError(
      `job for stage ${stageId} says kind "${kind}" but the stage is "${stage.kind}"`,
    );
  }
  // A job can come back after its stage ended (cancelled while queued, or a worker died
  // between finishing the stage and acknowledging the job): nothing left to do.
  if (stage.status === "succeeded" || stage.status === "cancelled") {
    return { stageId, status: stage.status, step: stage.step };
  }
  if (stage.status === "failed") {
    throw new UnrecoverableError(stage.error ?? `stage ${stageId} failed`);
  }

  try {
    const processor = ctx.processors[kind];
    if (!processor) {
      throw new UnrecoverableError(
        `stage kind "${kind}" is not implemented by this worker yet ` +
          `(implemented: ${implementedKinds(ctx.processors).join(", ")})`,
      );
    }
    const run = await getRun(prisma, runId);
    if (!run) throw new UnrecoverableError(`run ${runId} does not exist`);
    await startStage(prisma, stageId, ctx.device);
    const spec = run.spec as RunSpec;
    return await runStageLoop({ ctx, job, token, signal, stage, spec }, processor);
  } catch (err) {
    // Handed back to the queue (shutdown) or to another worker (lock lost): not a failure.
    if (err instanceof DelayedError || signal?.aborted) throw err;
    const message = err instanceof Error ? err.message : String(err);
    ctx.logger.error({ err, stageId, runId, kind }, "stage failed");
    await recordFailure(ctx, runId, stageId, kind, message);
    throw err instanceof UnrecoverableError ? err : new UnrecoverableError(message);
  }
}

/** BullMQ's reason for a job that lost its worker more often than maxStalledCount allows. */
export const STALLED_OUT = "job stalled more than allowable limit";

/**
 * A job BullMQ failed because its workers kept dying: no processor runs for it any more, so
 * the stage would stay running forever unless it is failed here.
 */
export async function failAbandonedStage(ctx: StageContext, data: StageJobData): Promise<void> {
  const stage = await getStage(ctx.prisma, data.stageId);
  if (!stage || (stage.status !== "queued" && stage.status !== "running")) return;
  await recordFailure(
    ctx,
    data.runId,
    data.stageId,
    data.kind,
    `its worker stopped responding more often than allowed (${STALLED_OUT})`,
  );
}

async function recordFailure(
  ctx: StageContext,
  runId: string,
  stageId: string,
  kind: string,
  message: string,
): Promise<void> {
  try {
    await finishStage(ctx.prisma, stageId, { status: "failed", error: message });
    await addEvent(ctx.prisma, runId, "error", `${kind} stage failed: ${message}`);
  } catch (dbErr) {
    // The database may be why the stage failed; the job still fails with the first error.
    ctx.logger.error({ err: dbErr, stageId }, "could not record the stage failure");
  }
}

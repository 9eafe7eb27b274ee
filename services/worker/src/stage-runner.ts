// The BullMQ processor for every stage queue: find the stage, mark it running, hand it to the
// processor of its kind, and turn a failure into a failed stage that is not retried. An
// unreachable Postgres or Redis is not a failure: the stage pauses, retries with backoff and goes
// on from its newest checkpoint; only errors of the training itself fail a stage.
import { readRunSpec } from "@chatrl/contracts";
import { isTransientError } from "@chatrl/contracts";
import {
  addEvent,
  finishStage,
  getRun,
  getStage,
  latestCheckpointSet,
  startStage,
} from "@chatrl/db";
import type { StageJobData } from "@chatrl/queue";
import { DelayedError, UnrecoverableError } from "bullmq";
import { handBackJob } from "./hand-back.ts";
import { implementedKinds } from "./processors.ts";
import { LockLostError, runStageLoop } from "./stage-loop.ts";
import type { StageContext, StageJob, StageResult } from "./types.ts";

export async function runStage(
  ctx: StageContext,
  job: StageJob,
  token?: string,
  signal?: AbortSignal,
): Promise<StageResult> {
  const { stageId, runId, kind } = job.data;
  // Aborted while waiting for the device (the worker is closing): give the job back untouched.
  if (signal?.aborted) return handBackJob(job, token, signal);
  const outage = new Outage(ctx, job, signal);
  for (;;) {
    // Whether an error now is the stage's failure (past the checks of the job itself).
    let started = false;
    try {
      const result = await attemptStage(ctx, job, token, signal, () => {
        started = true;
      });
      await outage.record();
      return result;
    } catch (err) {
      // Handed back to the queue (shutdown) or to another worker (lock lost): not a failure.
      if (err instanceof DelayedError || err instanceof LockLostError) throw err;
      // BullMQ's words for a job this worker no longer holds (Redis lost it, or another worker
      // took it over): stop, write nothing; the reconciler or the new holder carries on.
      if (isJobLost(err)) throw new LockLostError(stageId);
      if (signal?.aborted) return handBackJob(job, token, signal);
      if (isTransientError(err)) {
        // Postgres or Redis is unreachable: nothing is wrong with the training. Wait until the
        // database answers again, then go on from the stage's newest checkpoint.
        await outage.wait(err);
        if (signal?.aborted) return handBackJob(job, token, signal);
        await outage.record();
        continue;
      }
      if (!started || err instanceof JobRefused) throw err;
      const message = err instanceof Error ? err.message : String(err);
      ctx.logger.error({ err, stageId, runId, kind }, "stage failed");
      await recordFailure(ctx, stageId, message, signal);
      throw err instanceof UnrecoverableError ? err : new UnrecoverableError(message);
    }
  }
}

const JOB_LOST = /^(Missing key for job|Missing lock for job|Lock mismatch for job)/;

function isJobLost(err: unknown): boolean {
  return err instanceof Error && JOB_LOST.test(err.message);
}

/** A job that cannot run at all (its stage is gone, or failed before): nothing to record. */
class JobRefused extends UnrecoverableError {}

async function attemptStage(
  ctx: StageContext,
  job: StageJob,
  token: string | undefined,
  signal: AbortSignal | undefined,
  markStarted: () => void,
): Promise<StageResult> {
  const { prisma } = ctx;
  const { stageId, runId, kind } = job.data;
  const stage = await getStage(prisma, stageId);
  if (!stage) throw new JobRefused(`stage ${stageId} does not exist`);
  if (stage.kind !== kind) {
    throw new JobRefused(
      `job for stage ${stageId} says kind "${kind}" but the stage is "${stage.kind}"`,
    );
  }
  // A job can come back after its stage ended (cancelled while queued, or a worker died
  // between finishing the stage and acknowledging the job): nothing left to do.
  if (stage.status === "succeeded" || stage.status === "cancelled") {
    return { stageId, status: stage.status, step: stage.step };
  }
  if (stage.status === "failed") throw new JobRefused(stage.error ?? `stage ${stageId} failed`);

  markStarted();
  const processor = ctx.processors[kind];
  if (!processor) {
    throw new UnrecoverableError(
      `stage kind "${kind}" is not implemented by this worker yet ` +
        `(implemented: ${implementedKinds(ctx.processors).join(", ")})`,
    );
  }
  const run = await getRun(prisma, runId);
  if (!run) throw new UnrecoverableError(`run ${runId} does not exist`);
  const running = await startStage(prisma, stageId, ctx.device);
  // Runs stored before a setting existed read it at its default.
  const spec = readRunSpec(run.spec);
  return await runStageLoop({ ctx, job, token, signal, stage: running, spec }, processor);
}

/**
 * The pauses of one job while Postgres or Redis is unreachable: waits with exponential backoff
 * until the database answers, then says in the run's events what happened.
 */
class Outage {
  private pauses = 0;
  private since: number | undefined;
  private reason = "";

  constructor(
    private readonly ctx: StageContext,
    private readonly job: StageJob,
    private readonly signal: AbortSignal | undefined,
  ) {}

  async wait(err: unknown): Promise<void> {
    const { ctx, job } = this;
    this.since ??= Date.now();
    this.reason = firstLine(err);
    ctx.logger.warn(
      { err, stageId: job.data.stageId, pauses: this.pauses },
      "stage paused: a dependency is unreachable",
    );
    const { baseMs, maxMs } = ctx.retry ?? DEFAULT_RETRY;
    for (;;) {
      const delay = Math.min(maxMs, baseMs * 2 ** this.pauses);
      this.pauses += 1;
      // Jitter, so replicas that lost the database together do not all come back at once.
      await sleep(delay * (0.75 + Math.random() * 0.5), this.signal);
      if (this.signal?.aborted) return;
      try {
        await ctx.prisma.$queryRaw`SELECT 1`;
        return;
      } catch (probe) {
        if (!isTransientError(probe)) return; // not an outage any more: let the attempt tell
      }
    }
  }

  /**
   * Says in the run's events that the stage paused and why, once the database takes the event
   * (until then the pause stays pending and the next call tries again).
   */
  async record(): Promise<void> {
    if (this.since === undefined) return;
    const { ctx, job } = this;
    const seconds = ((Date.now() - this.since) / 1000).toFixed(1);
    const step = (job.progress as { step?: number } | undefined)?.step ?? 0;
    const message =
      `${job.data.kind} paused at step ${step} for ${seconds} s: Postgres or Redis was ` +
      `unreachable (${this.reason}); it goes on from its newest checkpoint`;
    try {
      await addEvent(ctx.prisma, job.data.runId, "warn", message);
      this.since = undefined;
      this.pauses = 0;
    } catch (err) {
      ctx.logger.warn({ err }, "could not record the pause yet");
    }
  }
}

const DEFAULT_RETRY = { baseMs: 500, maxMs: 15_000 };

function firstLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  const lines = text
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  // Prisma's messages start with "Invalid `prisma.x()` invocation:" and say what failed last.
  return (lines.at(-1) ?? text).slice(0, 200);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
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
    data.stageId,
    `its worker stopped responding more often than allowed (${STALLED_OUT})`,
  );
}

/**
 * Fails the stage (and so its run) and says why in the run's events. When the database is what
 * is missing, keeps trying with backoff until it is back, so a failure is never lost; gives up
 * only when the worker shuts down (the reconciler then records it from the failed job).
 */
async function recordFailure(
  ctx: StageContext,
  stageId: string,
  message: string,
  signal?: AbortSignal,
): Promise<void> {
  const { baseMs, maxMs } = ctx.retry ?? DEFAULT_RETRY;
  for (let tries = 0; ; tries++) {
    try {
      await finishStage(ctx.prisma, stageId, { status: "failed", error: message });
      return;
    } catch (dbErr) {
      if (!isTransientError(dbErr) || signal?.aborted) {
        ctx.logger.error({ err: dbErr, stageId }, "could not record the stage failure");
        return;
      }
      ctx.logger.warn({ err: dbErr, stageId }, "stage failure not recorded yet: database down");
      await sleep(Math.min(maxMs, baseMs * 2 ** tries), signal);
    }
  }
}

/**
 * A stage's job lost its worker (the process died or hung past its lock): BullMQ hands it to the
 * next worker, which resumes from the newest checkpoint. Says so in the run's events.
 */
export async function recordStalled(ctx: StageContext, stageId: string): Promise<void> {
  const stage = await getStage(ctx.prisma, stageId);
  if (!stage || (stage.status !== "queued" && stage.status !== "running")) return;
  const checkpoint = await latestCheckpointSet(ctx.prisma, stageId);
  const from = checkpoint ? `its checkpoint at step ${checkpoint.step}` : "the start";
  await addEvent(
    ctx.prisma,
    stage.runId,
    "warn",
    `${stage.kind} lost its worker at step ${stage.step} (it stopped renewing its job's lock); ` +
      `the stage goes back to the queue and resumes from ${from}`,
  );
}

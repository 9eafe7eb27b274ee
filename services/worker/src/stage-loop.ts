// One loop for every training stage (SFT, reward model, PPO): the lock renewed by yielding
// between steps, the cancel check before every step, periodic and final checkpoints, progress,
// metrics, the cost clock, resume and the shutdown hand-back. What differs by stage kind (its
// inputs, its models, its trainer, the files of its checkpoints) is a StageProcessor.
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import type { RunSpec, StageKind } from "@chatrl/contracts";
import {
  addEvent,
  addMetrics,
  type Checkpoint,
  type CheckpointFile,
  type CheckpointRole,
  type CheckpointSet,
  finishStage,
  getStage,
  latestCheckpointSet,
  listMetrics,
  readCheckpointPart,
  recordStageData,
  recordStageProgress,
  type StageRow,
  saveCheckpoints,
} from "@chatrl/db";
import type { StageTrainer, StepReport } from "@chatrl/engine";
import { UnrecoverableError } from "bullmq";
import { handBackJob } from "./hand-back.ts";
import { StageClock } from "./stage-clock.ts";
import {
  ABORT_SHUTDOWN,
  type Prisma,
  type StageContext,
  type StageJob,
  type StageResult,
} from "./types.ts";

export type { CheckpointFile };

/** What one stage kind trains in one attempt: its trainer and the models behind it. */
export interface StageSession {
  readonly trainer: StageTrainer;
  /** Steps between checkpoints (none at the last step: the final checkpoint is written then). */
  readonly checkpointEvery: number;
  /** Steps between metric reports (sft and reward: checkpoint_every / 5; ppo: 1). */
  readonly reportEvery: number;
  /** Examples cut and dropped to fit max_seq_len: stored on the stage, an event at the start. */
  readonly dataStats?: { truncated: number; dropped: number };
  /** The event when training starts fresh: "sft started on wasm: 40 examples, 12 steps, ...". */
  describe(): string;
  /**
   * The model files of a checkpoint, saved together in one transaction; the first one carries
   * the trainer state. sft: [sft]; reward: [reward]; ppo: [actor, critic, ema?].
   */
  checkpointFiles(): Promise<CheckpointFile[]>;
  /** Final figures stored on the stage when it succeeds (reward: accuracy, chosen_score ...). */
  summary?(): Record<string, number>;
  /** Releases the trainer and every model the session holds. */
  dispose(): void;
}

/** The stage's newest checkpoint, which a resumed attempt continues from. */
export type ResumePoint = {
  step: number;
  /** The checkpoint's model files by role. */
  files: ReadonlyMap<CheckpointRole, Uint8Array>;
  /** The file of `role`; an UnrecoverableError naming the role when the checkpoint has none. */
  file(role: CheckpointRole): Uint8Array;
};

/**
 * Builds a stage kind's session. With `resume` the models start from its files; the loop then
 * gives the trainer its state (importState) and checks that it stands at `resume.step`.
 */
export type StageProcessor = {
  open(
    ctx: StageContext,
    spec: RunSpec,
    stage: StageRow,
    resume?: ResumePoint,
  ): Promise<StageSession>;
};

/** The processor of each stage kind a worker trains; a kind without one fails its stage. */
export type ProcessorTable = Partial<Record<StageKind, StageProcessor>>;

/** One attempt at a stage, as BullMQ hands it to the processor. */
export type StageAttempt = {
  ctx: StageContext;
  job: StageJob;
  token: string | undefined;
  signal: AbortSignal | undefined;
  /** Already marked running. */
  stage: StageRow;
  spec: RunSpec;
};

/** Runs one attempt at a stage with its kind's processor, from its newest checkpoint if any. */
export async function runStageLoop(
  attempt: StageAttempt,
  processor: StageProcessor,
): Promise<StageResult> {
  const { ctx, stage, spec } = attempt;
  const { prisma } = ctx;
  const clock = new StageClock(
    {
      wallSeconds: stage.wallSeconds,
      deviceSeconds: stage.deviceSeconds,
      tokens: Number(stage.tokens),
    },
    spec.compute.price_per_hour,
  );

  const newest = await latestCheckpointSet(prisma, stage.id);
  if (newest?.final) {
    // An earlier attempt wrote the final checkpoint (at its last step) and died before saying so.
    await recordProgress(prisma, stage.id, newest.step, newest.step, clock);
    await finishStage(prisma, stage.id, { status: "succeeded" });
    return { stageId: stage.id, status: "succeeded", step: newest.step };
  }

  const resume = newest ? await readResumePoint(prisma, newest) : undefined;
  const session = await processor.open(ctx, spec, stage, resume?.point);
  try {
    const { trainer } = session;
    if (resume) {
      await trainer.importState(resume.trainerState);
      if (trainer.step !== resume.point.step) {
        throw new UnrecoverableError(
          `the checkpoint of step ${resume.point.step} holds the trainer state of step ${trainer.step}`,
        );
      }
    }
    if (session.dataStats) {
      const { truncated, dropped } = session.dataStats;
      await recordStageData(prisma, stage.id, {
        examplesTruncated: truncated,
        examplesDropped: dropped,
      });
    }
    if (resume) {
      await addEvent(
        prisma,
        stage.runId,
        "info",
        `${stage.kind} resumed from step ${trainer.step}`,
      );
    } else {
      await addEvent(prisma, stage.runId, "info", session.describe());
      const { truncated = 0, dropped = 0 } = session.dataStats ?? {};
      if (truncated > 0 || dropped > 0) {
        await addEvent(
          prisma,
          stage.runId,
          "warn",
          `${stage.kind}: ${truncated} examples cut to max_seq_len (the end of the answer), ` +
            `${dropped} dropped (the prompt alone does not fit)`,
        );
      }
    }
    return await trainLoop({ ...attempt, session, clock });
  } finally {
    session.dispose();
  }
}

async function readResumePoint(
  prisma: Prisma,
  set: CheckpointSet,
): Promise<{ point: ResumePoint; trainerState: Uint8Array }> {
  const files = new Map<CheckpointRole, Uint8Array>();
  let trainerState: Uint8Array | null = null;
  for (const c of set.checkpoints) {
    files.set(c.role, await readPart(prisma, c, "model"));
    // saveCheckpoints stores the trainer state on the first file of the set.
    trainerState ??= await readCheckpointPart(prisma, c.id, "trainer");
  }
  const ids = set.checkpoints.map((c) => c.id).join(", ");
  if (!trainerState) throw new UnrecoverableError(`checkpoint ${ids} has no trainer state`);
  const point: ResumePoint = {
    step: set.step,
    files,
    file(role) {
      const bytes = files.get(role);
      if (!bytes) {
        const roles = [...files.keys()].join(", ");
        throw new UnrecoverableError(
          `the checkpoint of step ${set.step} (${ids}) has no ${role} model, only ${roles}`,
        );
      }
      return bytes;
    },
  };
  return { point, trainerState };
}

async function readPart(prisma: Prisma, c: Checkpoint, part: "model"): Promise<Uint8Array> {
  const bytes = await readCheckpointPart(prisma, c.id, part);
  if (!bytes) throw new UnrecoverableError(`checkpoint ${c.id} has no model weights`);
  return bytes;
}

type Loop = StageAttempt & { session: StageSession; clock: StageClock };

async function trainLoop(loop: Loop): Promise<StageResult> {
  const { ctx, job, signal, stage, session, clock } = loop;
  const { trainer, checkpointEvery, reportEvery } = session;
  const { prisma } = ctx;
  // Steps an earlier attempt already reported are redone after a resume, not reported twice.
  const reportedThrough = await lastReportedStep(prisma, stage);
  const window = new ReportWindow();
  let checkpointStep = trainer.step;
  // Where training (re)starts and how many steps it will take, before the first report.
  await recordProgress(prisma, stage.id, trainer.step, trainer.totalSteps, clock);

  while (trainer.step < trainer.totalSteps) {
    // A step's tensor work blocks the event loop; yielding here lets BullMQ renew the job's lock.
    await yieldToEventLoop();
    if (signal?.aborted) return await stopForAbort(loop, checkpointStep);
    if (await isCancelled(prisma, stage.id)) return await stopForCancel(loop);

    const { result: report, seconds } = await clock.timeDevice(() => trainer.trainStep());
    clock.addTokens(report.tokens);
    window.add(report, seconds);

    const last = report.step >= trainer.totalSteps;
    const reporting = report.step % reportEvery === 0 || last;
    const checkpointing = report.step % checkpointEvery === 0 && !last;
    if (reporting || checkpointing) await ensureJobOwned(loop);
    if (reporting) {
      const metrics = window.metrics();
      if (report.step > reportedThrough) await addMetrics(prisma, stage.id, report.step, metrics);
      await job.updateProgress({ step: report.step, total: trainer.totalSteps, ...metrics });
      await recordProgress(prisma, stage.id, report.step, trainer.totalSteps, clock);
      window.reset();
    }
    if (checkpointing) {
      await writeCheckpoint(loop, false);
      checkpointStep = report.step;
    }
  }

  if (await isCancelled(prisma, stage.id)) return await stopForCancel(loop);
  await ensureJobOwned(loop);
  const final = await writeCheckpoint(loop, true);
  await recordProgress(prisma, stage.id, trainer.step, trainer.totalSteps, clock);
  const summary = session.summary?.();
  await finishStage(prisma, stage.id, { status: "succeeded", summary });
  const { deviceSeconds, costUsd } = clock.totals();
  const figures = Object.entries(summary ?? {}).map(([name, value]) => `${name} ${value}, `);
  await addEvent(
    prisma,
    stage.runId,
    "info",
    `${stage.kind} succeeded at step ${trainer.step}: ${describeCheckpoint(final)}, ` +
      `${figures.join("")}${deviceSeconds.toFixed(1)} device seconds, $${costUsd.toFixed(4)}`,
  );
  return { stageId: stage.id, status: "succeeded", step: trainer.step };
}

/** This worker no longer holds the job's lock: another worker may be training the stage. */
export class LockLostError extends Error {
  constructor(stageId: string) {
    super(`stage ${stageId} stopped: this worker no longer holds its job (the lock was lost)`);
    this.name = "LockLostError";
  }
}

/**
 * Renews the job's lock before a write, and stops (LockLostError, nothing written) when this
 * worker does not hold it any more: Redis lost the job, or the job stalled and went to another
 * worker, which resumes from the newest checkpoint. Without this the two would both write.
 */
async function ensureJobOwned(loop: Loop): Promise<void> {
  const { ctx, job, token, stage } = loop;
  if (!token || !ctx.lockDurationMs) return;
  const renewed = await job.extendLock(token, ctx.lockDurationMs);
  if (!renewed) throw new LockLostError(stage.id);
}

/** "checkpoint ckpt_x" for one file, "checkpoints actor ckpt_a, critic ckpt_c" for several. */
function describeCheckpoint(rows: Checkpoint[]): string {
  if (rows.length === 1) return `checkpoint ${rows[0].id}`;
  return `checkpoints ${rows.map((r) => `${r.role} ${r.id}`).join(", ")}`;
}

async function lastReportedStep(prisma: Prisma, stage: StageRow): Promise<number> {
  // Every report carries tokens_per_s, whatever else the trainer measures.
  const rows = await listMetrics(prisma, stage.runId, { stage: stage.kind, name: "tokens_per_s" });
  return rows.reduce((max, m) => Math.max(max, m.step), 0);
}

async function isCancelled(prisma: Prisma, stageId: string): Promise<boolean> {
  const stage = await getStage(prisma, stageId);
  return stage?.status === "cancelled";
}

async function recordProgress(
  prisma: Prisma,
  stageId: string,
  step: number,
  total: number,
  clock: StageClock,
): Promise<void> {
  // total is the trainer's: the steps training really takes (epochs decide without max_steps).
  await recordStageProgress(prisma, stageId, {
    step,
    maxSteps: total,
    progress: step / total,
    ...clock.totals(),
  });
}

/** Every model file of the session and, unless final, the trainer state: one transaction. */
async function writeCheckpoint(loop: Loop, final: boolean): Promise<Checkpoint[]> {
  const { ctx, stage, session } = loop;
  return saveCheckpoints(ctx.prisma, {
    runId: stage.runId,
    stageId: stage.id,
    step: session.trainer.step,
    final,
    files: await session.checkpointFiles(),
    // The final checkpoint is a finished model; nothing resumes from it.
    trainer: final ? undefined : await session.trainer.exportState(),
  });
}

/** The run was cancelled: stop here, keep what was spent on the books, leave it cancelled. */
async function stopForCancel(loop: Loop): Promise<StageResult> {
  const { ctx, stage, session, clock } = loop;
  const { step, totalSteps } = session.trainer;
  await recordProgress(ctx.prisma, stage.id, step, totalSteps, clock);
  await addEvent(ctx.prisma, stage.runId, "info", `${stage.kind} cancelled at step ${step}`);
  return { stageId: stage.id, status: "cancelled", step };
}

/**
 * The worker is shutting down or lost the job. On shutdown, save where we are first so the next
 * worker loses nothing; with the lock lost another worker may own the job, so write nothing.
 */
async function stopForAbort(loop: Loop, checkpointStep: number): Promise<never> {
  const { ctx, job, token, signal, stage, session, clock } = loop;
  const { step, totalSteps } = session.trainer;
  if (signal?.reason === ABORT_SHUTDOWN) {
    if (step > checkpointStep) await writeCheckpoint(loop, false);
    await recordProgress(ctx.prisma, stage.id, step, totalSteps, clock);
    await addEvent(
      ctx.prisma,
      stage.runId,
      "info",
      `${stage.kind} paused at step ${step}: worker shutting down, the stage goes back to the queue`,
    );
  }
  return handBackJob(job, token, signal as AbortSignal);
}

/**
 * What the steps since the last report measured: each metric averaged over the steps that
 * reported it, each phase as time_<phase>_s (seconds per step), and tokens per device second.
 */
export class ReportWindow {
  private readonly sums = new Map<string, { total: number; steps: number }>();
  private tokens = 0;
  private seconds = 0;

  add(report: StepReport, seconds: number): void {
    for (const [name, value] of Object.entries(report.metrics)) this.addValue(name, value);
    for (const [phase, value] of Object.entries(report.phases ?? {})) {
      this.addValue(`time_${phase}_s`, value);
    }
    this.tokens += report.tokens;
    this.seconds += seconds;
  }

  metrics(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, { total, steps }] of this.sums) out[name] = total / steps;
    out.tokens_per_s = this.seconds > 0 ? this.tokens / this.seconds : 0;
    return out;
  }

  reset(): void {
    this.sums.clear();
    this.tokens = 0;
    this.seconds = 0;
  }

  private addValue(name: string, value: number): void {
    const sum = this.sums.get(name) ?? { total: 0, steps: 0 };
    sum.total += value;
    sum.steps += 1;
    this.sums.set(name, sum);
  }
}

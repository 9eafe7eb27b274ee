// The SFT stage (DeepSpeed-Chat step 1) as a queue job: train, report, checkpoint, resume.
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import type { RunSpec } from "@chatrl/contracts";
import {
  addEvent,
  addMetrics,
  finishStage,
  getStage,
  latestCheckpoint,
  listMetrics,
  readCheckpointPart,
  recordStageProgress,
  saveCheckpoint,
} from "@chatrl/db";
import { ByteTokenizer, type GPT, SFTTrainer, saveModel } from "@chatrl/engine";
import { UnrecoverableError } from "bullmq";
import { handBackJob } from "./hand-back.ts";
import { loadBaseModel, loadCheckpointModel, loadSftExamples, sftConfig } from "./sft-inputs.ts";
import { StageClock } from "./stage-clock.ts";
import {
  ABORT_SHUTDOWN,
  type Prisma,
  type StageContext,
  type StageJob,
  type StageResult,
} from "./types.ts";

type Stage = NonNullable<Awaited<ReturnType<typeof getStage>>>;

/** One attempt at an SFT stage that is already marked running. */
export async function runSftStage(
  ctx: StageContext,
  job: StageJob,
  token: string | undefined,
  signal: AbortSignal | undefined,
  stage: Stage,
  spec: RunSpec,
): Promise<StageResult> {
  const { prisma } = ctx;
  const clock = new StageClock(
    {
      wallSeconds: stage.wallSeconds,
      deviceSeconds: stage.deviceSeconds,
      tokens: Number(stage.tokens),
    },
    spec.compute.price_per_hour,
  );

  const resumeFrom = await latestCheckpoint(prisma, stage.id);
  if (resumeFrom?.final) {
    // An earlier attempt wrote the final checkpoint (at its last step) and died before saying so.
    await recordProgress(prisma, stage.id, resumeFrom.step, resumeFrom.step, clock);
    await finishStage(prisma, stage.id, { status: "succeeded" });
    return { stageId: stage.id, status: "succeeded", step: resumeFrom.step };
  }

  const examples = await loadSftExamples(prisma, spec);
  let model: GPT | undefined;
  let trainer: SFTTrainer | undefined;
  try {
    model = resumeFrom
      ? await loadCheckpointModel(prisma, resumeFrom.id)
      : await loadBaseModel(prisma, spec);
    trainer = new SFTTrainer(model, new ByteTokenizer(), examples, sftConfig(spec));
    if (resumeFrom) {
      const state = await readCheckpointPart(prisma, resumeFrom.id, "trainer");
      if (!state) {
        throw new UnrecoverableError(`checkpoint ${resumeFrom.id} has no trainer state`);
      }
      await trainer.importState(state);
      await addEvent(prisma, stage.runId, "info", `sft resumed from step ${trainer.step}`);
    } else {
      await addEvent(
        prisma,
        stage.runId,
        "info",
        `sft started on ${ctx.device}: ${examples.length} examples, ` +
          `${trainer.totalSteps} steps, ${model.parameterCount()} parameters`,
      );
    }
    return await trainLoop({ ctx, job, token, signal, stage, spec, model, trainer, clock });
  } finally {
    trainer?.dispose();
    model?.dispose();
  }
}

type Loop = {
  ctx: StageContext;
  job: StageJob;
  token: string | undefined;
  signal: AbortSignal | undefined;
  stage: Stage;
  spec: RunSpec;
  model: GPT;
  trainer: SFTTrainer;
  clock: StageClock;
};

async function trainLoop(loop: Loop): Promise<StageResult> {
  const { ctx, job, signal, stage, spec, trainer, clock } = loop;
  const { prisma } = ctx;
  const checkpointEvery = spec.stages.sft.checkpoint_every;
  // Five metric points per checkpoint interval: enough for a loss curve, few rows.
  const reportEvery = Math.max(1, Math.floor(checkpointEvery / 5));
  // Steps an earlier attempt already reported are redone after a resume, not reported twice.
  const reportedThrough = await lastReportedStep(prisma, stage);
  const window = new ReportWindow();
  let checkpointStep = trainer.step;
  // Where training (re)starts and how many steps it will take, before the first report.
  await recordProgress(prisma, stage.id, trainer.step, trainer.totalSteps, clock);

  while (trainer.step < trainer.totalSteps) {
    // trainStep is synchronous; yielding here lets BullMQ renew the job's lock.
    await yieldToEventLoop();
    if (signal?.aborted) return await stopForAbort(loop, checkpointStep);
    if (await isCancelled(prisma, stage.id)) return await stopForCancel(loop);

    const { result: step, seconds } = clock.timeDevice(() => trainer.trainStep());
    clock.addTokens(step.tokens);
    window.add(step, seconds);

    const last = step.step >= trainer.totalSteps;
    if (step.step % reportEvery === 0 || last) {
      const loss = window.meanLoss();
      if (step.step > reportedThrough) {
        await addMetrics(prisma, stage.id, step.step, {
          loss,
          lr: step.lr,
          grad_norm: step.gradNorm,
          tokens_per_s: window.tokensPerSecond(),
        });
      }
      await job.updateProgress({ step: step.step, total: trainer.totalSteps, loss });
      await recordProgress(prisma, stage.id, step.step, trainer.totalSteps, clock);
      window.reset();
    }
    if (step.step % checkpointEvery === 0 && !last) {
      await writeCheckpoint(loop, false);
      checkpointStep = step.step;
    }
  }

  if (await isCancelled(prisma, stage.id)) return await stopForCancel(loop);
  const final = await writeCheckpoint(loop, true);
  await recordProgress(prisma, stage.id, trainer.step, trainer.totalSteps, clock);
  await finishStage(prisma, stage.id, { status: "succeeded" });
  const { deviceSeconds, costUsd } = clock.totals();
  await addEvent(
    prisma,
    stage.runId,
    "info",
    `sft succeeded at step ${trainer.step}: checkpoint ${final.id}, ` +
      `${deviceSeconds.toFixed(1)} device seconds, $${costUsd.toFixed(4)}`,
  );
  return { stageId: stage.id, status: "succeeded", step: trainer.step };
}

async function lastReportedStep(prisma: Prisma, stage: Stage): Promise<number> {
  const losses = await listMetrics(prisma, stage.runId, { stage: stage.kind, name: "loss" });
  return losses.reduce((max, m) => Math.max(max, m.step), 0);
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
  // total is the trainer's: fewer than the requested max_steps when the epochs run out first.
  await recordStageProgress(prisma, stageId, {
    step,
    maxSteps: total,
    progress: step / total,
    ...clock.totals(),
  });
}

async function writeCheckpoint(loop: Loop, final: boolean) {
  const { ctx, stage, model, trainer } = loop;
  return saveCheckpoint(ctx.prisma, {
    runId: stage.runId,
    stageId: stage.id,
    step: trainer.step,
    role: "sft",
    final,
    config: model.config,
    model: await saveModel(model),
    // The final checkpoint is a finished model; nothing resumes from it.
    trainer: final ? undefined : await trainer.exportState(),
  });
}

/** The run was cancelled: stop here, keep what was spent on the books, leave it cancelled. */
async function stopForCancel(loop: Loop): Promise<StageResult> {
  const { ctx, stage, trainer, clock } = loop;
  await recordProgress(ctx.prisma, stage.id, trainer.step, trainer.totalSteps, clock);
  await addEvent(ctx.prisma, stage.runId, "info", `sft cancelled at step ${trainer.step}`);
  return { stageId: stage.id, status: "cancelled", step: trainer.step };
}

/**
 * The worker is shutting down or lost the job. On shutdown, save where we are first so the next
 * worker loses nothing; with the lock lost another worker may own the job, so write nothing.
 */
async function stopForAbort(loop: Loop, checkpointStep: number): Promise<never> {
  const { ctx, job, token, signal, stage, trainer, clock } = loop;
  if (signal?.reason === ABORT_SHUTDOWN) {
    if (trainer.step > checkpointStep) await writeCheckpoint(loop, false);
    await recordProgress(ctx.prisma, stage.id, trainer.step, trainer.totalSteps, clock);
    await addEvent(
      ctx.prisma,
      stage.runId,
      "info",
      `sft paused at step ${trainer.step}: worker shutting down, the stage goes back to the queue`,
    );
  }
  return handBackJob(job, token, signal as AbortSignal);
}

/** Loss, tokens and device time since the last report. */
class ReportWindow {
  private losses: number[] = [];
  private tokens = 0;
  private seconds = 0;

  add(step: { loss: number; tokens: number }, seconds: number): void {
    this.losses.push(step.loss);
    this.tokens += step.tokens;
    this.seconds += seconds;
  }

  meanLoss(): number {
    return this.losses.reduce((a, b) => a + b, 0) / Math.max(1, this.losses.length);
  }

  tokensPerSecond(): number {
    return this.seconds > 0 ? this.tokens / this.seconds : 0;
  }

  reset(): void {
    this.losses = [];
    this.tokens = 0;
    this.seconds = 0;
  }
}

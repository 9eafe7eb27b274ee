// Postgres is the truth about runs; Redis only dispatches them. When the two disagree (Redis
// restarted without persistence, or lost its last second of writes; a job failed while the
// database was down), the reconciler puts the queues right: a stage that Postgres says is queued
// or running but that has no job in Redis is queued again (and resumes from its newest
// checkpoint), and a job that failed without its stage being failed has its failure recorded.
// Every replica runs one; a Postgres advisory lock lets one at a time act, and job ids are stage
// ids, so a job queued twice is still one job.
import { isTransientError } from "@chatrl/contracts";
import {
  addEvent,
  type Database,
  finishStage,
  getStage,
  latestCheckpointSet,
  type RunWithStages,
  type StageRow,
  unfinishedRuns,
  withAdvisoryLock,
} from "@chatrl/db";
import {
  closeStageQueues,
  createFlowProducer,
  createStageQueues,
  enqueueRun,
  redisConnection,
  STAGE_QUEUES,
  type StageKind,
} from "@chatrl/queue";
import type { FlowProducer, Job, Queue } from "bullmq";
import type { Logger } from "pino";
import { STALLED_OUT } from "./stage-runner.ts";

export const RECONCILE_LOCK = "chatrl:reconcile";

/** What one pass did, by stage id. */
export type ReconcileReport = {
  /** False when another replica held the lock (this pass did nothing). */
  ran: boolean;
  requeued: string[];
  failed: string[];
};

export type ReconcilerDeps = {
  db: Database;
  redisUrl: string;
  prefix: string;
  logger: Logger;
};

export type Reconciler = {
  /** One pass now (also what the timer runs). */
  runOnce(): Promise<ReconcileReport>;
  close(): Promise<void>;
};

type JobState = Awaited<ReturnType<Job["getState"]>> | "missing";

// A job in one of these will be (or is being) processed; its stage needs nothing from us.
const LIVE_STATES = new Set<JobState>([
  "active",
  "waiting",
  "delayed",
  "prioritized",
  "waiting-children",
]);

export function createReconciler(
  deps: ReconcilerDeps,
  opts: { intervalMs: number; graceMs: number },
): Reconciler {
  const { db, logger } = deps;
  const prisma = db.prisma;
  // A connection of its own that fails commands at once while Redis is away (instead of
  // holding them until it is back, when the decision they carry may be stale).
  const connection = redisConnection(deps.redisUrl, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: 5000,
  });
  connection.on("error", () => {}); // a pass that cannot reach Redis logs it
  let flow: FlowProducer | undefined;
  let queues: Record<StageKind, Queue> | undefined;
  const open = () => {
    if (!flow || !queues) {
      flow = createFlowProducer(connection, deps.prefix);
      flow.on("error", () => {});
      queues = createStageQueues(connection, deps.prefix);
      for (const q of Object.values(queues)) q.on("error", () => {});
    }
    return { flow, queues };
  };

  async function stateOf(queue: Queue, stageId: string): Promise<{ state: JobState; job?: Job }> {
    const job = await queue.getJob(stageId);
    if (!job) return { state: "missing" };
    return { state: await job.getState(), job };
  }

  async function reconcileRun(run: RunWithStages, report: ReconcileReport): Promise<void> {
    const { flow, queues } = open();
    const unfinished = run.stages.filter((s) => s.status === "queued" || s.status === "running");
    const lost: StageRow[] = [];
    const present = new Map<string, JobState>();
    for (const stage of unfinished) {
      const { state, job } = await stateOf(queues[stage.kind], stage.id);
      if (LIVE_STATES.has(state)) {
        present.set(stage.id, state);
        continue;
      }
      // Postgres may have moved on since the run was read (the stage finished, the run was
      // cancelled): act only on what is still true.
      const now = await getStage(prisma, stage.id);
      if (!now || (now.status !== "queued" && now.status !== "running")) continue;
      if (state === "failed" && job) {
        await recordJobFailure(run, now, job);
        report.failed.push(stage.id);
        continue;
      }
      // Gone, or completed / unknown while its stage is unfinished: BullMQ will never run it.
      if (job) await job.remove().catch(() => {});
      lost.push(now);
    }
    if (lost.length === 0) return;

    const ppo = unfinished.find((s) => s.kind === "ppo");
    const ppoLost = ppo !== undefined && lost.some((s) => s.id === ppo.id);
    if (ppo && !ppoLost) {
      // The parent still waits: each lost child goes back under it.
      for (const stage of lost) {
        await queues[stage.kind].add(
          stage.kind,
          { runId: run.id, stageId: stage.id, kind: stage.kind },
          {
            jobId: stage.id,
            attempts: 1,
            removeOnFail: false,
            removeOnComplete: { age: 7 * 24 * 3600, count: 1000 },
            parent: { id: ppo.id, queue: `${deps.prefix}:${STAGE_QUEUES.ppo}` },
            failParentOnFailure: true,
          },
        );
      }
    } else if (ppoLost) {
      // A new parent needs its children queued with it; one still being trained cannot be
      // moved under it, so wait for it to finish (the next pass sees it succeeded).
      const busy = unfinished.filter((s) => s.id !== ppo.id && present.get(s.id) === "active");
      if (busy.length > 0) {
        logger.info({ runId: run.id }, "reconcile: ppo job lost; waiting for its active parents");
        return;
      }
      for (const stage of unfinished) {
        if (!present.has(stage.id)) continue;
        const job = await queues[stage.kind].getJob(stage.id);
        await job?.remove().catch(() => {});
        const now = await getStage(prisma, stage.id);
        if (now) lost.push(now);
      }
      await enqueueRun(flow, { id: run.id, stages: lost }, { timeoutMs: 5000 });
    } else {
      await enqueueRun(flow, { id: run.id, stages: lost }, { timeoutMs: 5000 });
    }
    for (const stage of lost) {
      const checkpoint = await latestCheckpointSet(prisma, stage.id);
      const from = checkpoint ? `its checkpoint at step ${checkpoint.step}` : "the start";
      await addEvent(
        prisma,
        run.id,
        "warn",
        `${stage.kind} stage was ${stage.status} but its job was missing from the queue ` +
          `(Redis lost it); queued again, it resumes from ${from}`,
      );
      report.requeued.push(stage.id);
      logger.warn({ runId: run.id, stageId: stage.id }, "reconcile: stage queued again");
    }
  }

  /** The job failed but its stage was never marked failed (the database was down then). */
  async function recordJobFailure(run: RunWithStages, stage: StageRow, job: Job): Promise<void> {
    const reason = job.failedReason || "the job failed";
    const message =
      reason === STALLED_OUT
        ? `its worker stopped responding more often than allowed (${STALLED_OUT})`
        : reason;
    await finishStage(prisma, stage.id, { status: "failed", error: message });
    logger.warn({ runId: run.id, stageId: stage.id, reason }, "reconcile: failure recorded");
  }

  async function runOnce(): Promise<ReconcileReport> {
    const report: ReconcileReport = { ran: false, requeued: [], failed: [] };
    const outcome = await withAdvisoryLock(db, RECONCILE_LOCK, async () => {
      const runs = await unfinishedRuns(prisma, {
        createdBefore: new Date(Date.now() - opts.graceMs),
      });
      for (const run of runs) await reconcileRun(run, report);
    });
    report.ran = outcome.locked;
    return report;
  }

  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;
  let closed = false;
  const tick = () => {
    if (closed || running) return;
    running = runOnce()
      .catch((err) => {
        // An outage is the normal reason; the next pass tries again.
        if (isTransientError(err)) logger.warn({ err }, "reconcile: dependency unreachable");
        else logger.error({ err }, "reconcile pass failed");
      })
      .finally(() => {
        running = undefined;
      });
  };
  if (opts.intervalMs > 0) {
    timer = setInterval(tick, opts.intervalMs);
    timer.unref();
  }

  return {
    runOnce,
    async close() {
      closed = true;
      clearInterval(timer);
      await running;
      await flow?.close();
      if (queues) await closeStageQueues(queues);
      connection.disconnect();
    },
  };
}

import type { StageKind } from "@chatrl/contracts";
import { FlowProducer, type FlowJob, type JobsOptions, Queue } from "bullmq";
import { Redis, type RedisOptions } from "ioredis";

export type { StageKind };

/** One BullMQ queue per stage kind, so workers can serve any subset (CHATRL_QUEUES). */
export const STAGE_QUEUES: Record<StageKind, string> = { sft: "sft", reward: "reward", ppo: "ppo" };

/** The payload of every stage job; the job's name is its kind and its id the stage id. */
export type StageJobData = { runId: string; stageId: string; kind: StageKind };

export type RunToEnqueue = { id: string; stages: { id: string; kind: StageKind }[] };

export class QueueUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "QueueUnavailableError";
  }
}

/** A connection for BullMQ: workers need `maxRetriesPerRequest: null` (blocking commands). */
export function redisConnection(url: string, options: RedisOptions = {}): Redis {
  return new Redis(url, { maxRetriesPerRequest: null, ...options });
}

/** Resolves when Redis answers PING; rejects with a message naming the URL when nothing does. */
export async function checkRedis(url: string, timeoutMs = 2000): Promise<void> {
  const client = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  client.on("error", () => {}); // reported through the rejected promise below
  try {
    await withTimeout(
      client.connect().then(() => client.ping()),
      timeoutMs,
      `no answer within ${timeoutMs} ms`,
    );
  } catch (error) {
    throw new QueueUnavailableError(
      `Redis at ${redactUrl(url)} is unreachable: ${(error as Error).message}`,
      { cause: error },
    );
  } finally {
    client.disconnect();
  }
}

function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):([^@/]+)@/, "//$1:***@");
}

async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function createFlowProducer(connection: Redis, prefix: string): FlowProducer {
  return new FlowProducer({ connection, prefix });
}

/**
 * Whether the Redis connection the flow producer was given is up now (its ioredis status is
 * `ready`); false for a producer built from connection options, whose state is not known here.
 */
export function isFlowConnected(flow: FlowProducer): boolean {
  const connection = flow.opts.connection as { status?: unknown } | undefined;
  return connection?.status === "ready";
}

/** The three stage queues under a prefix (for cancelling queued jobs and for inspection). */
export function createStageQueues(connection: Redis, prefix: string): Record<StageKind, Queue> {
  return {
    sft: new Queue(STAGE_QUEUES.sft, { connection, prefix }),
    reward: new Queue(STAGE_QUEUES.reward, { connection, prefix }),
    ppo: new Queue(STAGE_QUEUES.ppo, { connection, prefix }),
  };
}

export async function closeStageQueues(queues: Record<StageKind, Queue>): Promise<void> {
  await Promise.all(Object.values(queues).map((queue) => queue.close()));
}

// Training is not retried blindly: a failed stage stays failed for a person to look at
// (and resume from its checkpoint). Finished jobs are kept a while for inspection.
const JOB_OPTIONS: JobsOptions = {
  attempts: 1,
  removeOnComplete: { age: 7 * 24 * 3600, count: 1000 },
  removeOnFail: false,
};

function stageJob(runId: string, stage: { id: string; kind: StageKind }) {
  const data: StageJobData = { runId, stageId: stage.id, kind: stage.kind };
  return {
    name: stage.kind,
    queueName: STAGE_QUEUES[stage.kind],
    data,
    opts: { ...JOB_OPTIONS, jobId: stage.id },
  };
}

/**
 * The run's jobs as one flow: ppo is the parent of sft and reward (which then run at the same
 * time), so PPO starts only when both finished; a child's failure fails the parent. Without a
 * ppo stage every stage is its own root job (an SFT-only run is a single job).
 */
export function runFlows(run: RunToEnqueue): FlowJob[] {
  const ppo = run.stages.find((s) => s.kind === "ppo");
  const others = run.stages.filter((s) => s.kind !== "ppo");
  if (!ppo) return others.map((stage) => stageJob(run.id, stage));
  return [
    {
      ...stageJob(run.id, ppo),
      children: others.map((stage) => {
        const job = stageJob(run.id, stage);
        return { ...job, opts: { ...job.opts, failParentOnFailure: true } };
      }),
    },
  ];
}

/**
 * Queues a run's stage jobs. Job ids are stage ids, so enqueueing the same run again is a no-op.
 * Rejects with QueueUnavailableError when Redis does not become ready within `timeoutMs`, and
 * then sends nothing: the command is never issued, so no job appears later when Redis is back.
 */
export async function enqueueRun(
  flow: FlowProducer,
  run: RunToEnqueue,
  opts: { timeoutMs?: number } = {},
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const flows = runFlows(run);
  if (flows.length === 0) throw new Error(`run ${run.id} has no stages to queue`);
  try {
    await withTimeout(flow.waitUntilReady(), timeoutMs, `Redis not ready within ${timeoutMs} ms`);
  } catch (error) {
    throw new QueueUnavailableError(`Cannot queue run ${run.id}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  try {
    // Several root jobs (no ppo stage but sft and reward) go in one MULTI with addBulk.
    if (flows.length === 1) await withTimeout(flow.add(flows[0]), timeoutMs, "Redis timed out");
    else await withTimeout(flow.addBulk(flows), timeoutMs, "Redis timed out");
  } catch (error) {
    throw new QueueUnavailableError(`Cannot queue run ${run.id}: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/**
 * enqueueRun for several runs in one Redis transaction (addBulk of all their flows); one run
 * goes as enqueueRun sends it. Job ids are stage ids, so adding a run again queues nothing.
 */
export async function enqueueRuns(
  flow: FlowProducer,
  runs: RunToEnqueue[],
  opts: { timeoutMs?: number } = {},
): Promise<void> {
  if (runs.length === 1) return enqueueRun(flow, runs[0], opts);
  const timeoutMs = opts.timeoutMs ?? 5000;
  const flows = runs.flatMap(runFlows);
  const ids = runs.map((run) => run.id).join(", ");
  try {
    await withTimeout(flow.waitUntilReady(), timeoutMs, `Redis not ready within ${timeoutMs} ms`);
    await withTimeout(flow.addBulk(flows), timeoutMs, "Redis timed out");
  } catch (error) {
    throw new QueueUnavailableError(`Cannot queue runs ${ids}: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/**
 * Removes the run's jobs that no worker has taken yet (waiting, delayed, or a parent waiting
 * for its children). Jobs already active stay: their worker sees the cancelled stage status at
 * its next step. Returns the ids of the removed jobs.
 */
export async function removeRunJobs(
  queues: Record<StageKind, Queue>,
  run: RunToEnqueue,
  opts: { timeoutMs?: number } = {},
): Promise<string[]> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  try {
    await withTimeout(
      Promise.all(run.stages.map((stage) => queues[stage.kind].waitUntilReady())),
      timeoutMs,
      `Redis not ready within ${timeoutMs} ms`,
    );
  } catch (error) {
    throw new QueueUnavailableError(
      `Cannot remove jobs of run ${run.id}: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
  // A connection that was ready and then lost Redis holds commands until it is back (it
  // does not fail them), so the removal as a whole has the same deadline as the wait above.
  try {
    return await withTimeout(removeWaiting(queues, run), timeoutMs, "Redis timed out");
  } catch (error) {
    throw new QueueUnavailableError(
      `Cannot remove jobs of run ${run.id}: ${(error as Error).message}`,
      { cause: error },
    );
  }
}

async function removeWaiting(
  queues: Record<StageKind, Queue>,
  run: RunToEnqueue,
): Promise<string[]> {
  const removed: string[] = [];
  // Parent first: removing ppo removes its children with it when they are not active.
  const order: StageKind[] = ["ppo", "reward", "sft"];
  const stages = [...run.stages].sort((a, b) => order.indexOf(a.kind) - order.indexOf(b.kind));
  for (const stage of stages) {
    const job = await queues[stage.kind].getJob(stage.id);
    if (!job) continue;
    const state = await job.getState();
    if (
      state !== "waiting" &&
      state !== "delayed" &&
      state !== "waiting-children" &&
      state !== "prioritized"
    ) {
      continue;
    }
    try {
      await job.remove();
      removed.push(stage.id);
    } catch {
      // Taken by a worker between getState and remove: it is active now and checks the status.
    }
  }
  return removed;
}

export { FlowThread } from "./flow-thread.ts";

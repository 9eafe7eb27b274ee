// The outbox of POST /v1/runs. A run is committed in Postgres (the truth about runs) before
// anything goes to Redis, and the submission is answered then; its BullMQ flow is added right
// after by this dispatcher, batched with the runs committed meanwhile (one Redis transaction
// for many), without the answer waiting on it. Job ids are stage ids, so a run sent twice (a
// retry here, the worker's reconciler) is still one job per stage. Should the dispatch be lost
// (Redis gone for longer than the retries, the process dying in between), the run is still
// queued in Postgres, and the reconciler (services/worker/src/reconciler.ts) queues it once it
// is older than CHATRL_RECONCILE_GRACE_MS: docs/decisions/0009.
import { groupCalls } from "@chatrl/db";
import type { RunToEnqueue } from "@chatrl/queue";

export type RunDispatcher = {
  /**
   * Adds the run's flow soon, with the runs dispatched meanwhile. Resolves true once its jobs
   * are in Redis, false once it gave up (`onLost` has been told); never rejects.
   */
  dispatch(run: RunToEnqueue): Promise<boolean>;
  /** Resolves once the run's dispatch, if one is under way, has ended (at once otherwise). */
  settled(runId: string): Promise<void>;
  /** Runs whose dispatch has not ended. */
  readonly backlog: number;
  /** No more retries; resolves once every dispatch under way has ended. */
  close(): Promise<void>;
};

export type RunDispatcherOptions = {
  /** Pauses before each retry of a run whose flow could not be added (default 0.25, 1, 4 s). */
  retryDelaysMs?: number[];
  /** Told about a run given up on, with the last error (the reconciler will queue it). */
  onLost(run: RunToEnqueue, error: unknown): Promise<void> | void;
};

/**
 * `addRuns` puts several runs' flows in Redis at once (enqueueRuns, or a FlowThread's addRuns),
 * waiting for Redis as long as one attempt may.
 */
export function runDispatcher(
  addRuns: (runs: RunToEnqueue[]) => Promise<void>,
  opts: RunDispatcherOptions,
): RunDispatcher {
  const retryDelaysMs = opts.retryDelaysMs ?? [250, 1000, 4000];
  // Two transactions on the way at most: under load a batch forms while one is in Redis, so a
  // flow add costs a share of one round trip and one MULTI instead of one of each.
  const send = groupCalls(
    async (runs: RunToEnqueue[]) => {
      await addRuns(runs);
      return runs.map(() => true);
    },
    { concurrency: 2, maxBatch: 64 },
  );
  const underWay = new Map<string, Promise<boolean>>();
  // Retries waiting for their turn; close() wakes them, to give up at once.
  const pausing = new Set<() => void>();
  let closed = false;
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        pausing.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      pausing.add(wake);
    });

  async function attempt(run: RunToEnqueue): Promise<boolean> {
    for (let retry = 0; ; retry++) {
      try {
        return await send(run);
      } catch (error) {
        if (retry < retryDelaysMs.length && !closed) await pause(retryDelaysMs[retry]);
        if (retry >= retryDelaysMs.length || closed) {
          await Promise.resolve(opts.onLost(run, error)).catch(() => {});
          return false;
        }
      }
    }
  }

  return {
    dispatch(run) {
      const done = attempt(run).finally(() => {
        if (underWay.get(run.id) === done) underWay.delete(run.id);
      });
      underWay.set(run.id, done);
      return done;
    },
    async settled(runId) {
      await underWay.get(runId);
    },
    get backlog() {
      return underWay.size;
    },
    async close() {
      closed = true;
      for (const wake of [...pausing]) wake();
      await Promise.all(underWay.values());
    },
  };
}

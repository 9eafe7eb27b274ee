// POST /v1/runs answers once the run is committed in Postgres; its BullMQ flow follows (the api's
// dispatcher, services/api/src/routes/run-dispatch.ts), and a run whose flow never got to Redis
// is queued by the worker's reconciler: docs/decisions/0009.
import type { FlowProducer } from "bullmq";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  createDatasetId,
  startTestApi,
  type TestApi,
  uploadDataset,
  waitForJobs,
} from "../services/api/test/helpers.ts";
import { createReconciler } from "../services/worker/src/reconciler.ts";

let api: TestApi;
let supervisedId: string;
let preferenceId: string;

beforeAll(async () => {
  // On the event loop: the tests below make the flow producer's adds fail (interceptFlowAdds).
  api = await startTestApi({}, { dispatchRetryDelaysMs: [20], flowThread: false });
  supervisedId = await createDatasetId(api.app);
  const pairs = Array.from(
    { length: 20 },
    (_, i) => `{"prompt":"Say ${i} politely","chosen":"${i}, please.","rejected":"${i}!"}`,
  );
  preferenceId = (await uploadDataset(api.app, pairs.join("\n"), "polite")).json().id;
});
afterAll(async () => {
  await api?.close();
});

type RunJson = {
  id: string;
  status: string;
  stages: { id: string; kind: "sft" | "reward" | "ppo"; status: string }[];
};

/** A three-stage run (ppo waits for sft and reward). */
async function submit(): Promise<RunJson> {
  const response = await api.app.inject({
    method: "POST",
    url: "/v1/runs",
    payload: {
      name: "dispatch",
      model: { preset: "tiny" },
      datasets: [
        { id: supervisedId, stages: ["sft"] },
        { id: preferenceId, stages: ["reward", "ppo"] },
      ],
      stages: { sft: { max_steps: 1 }, reward: { max_steps: 1 }, ppo: { max_steps: 1 } },
    },
  });
  expect(response.statusCode, response.body).toBe(201);
  return response.json();
}

/** Every job of the run in any queue and state, by stage id (a stage queued twice shows twice). */
async function jobsOf(run: RunJson): Promise<string[]> {
  const states = ["waiting", "waiting-children", "active", "delayed", "completed", "failed"];
  const ids: string[] = [];
  for (const queue of Object.values(api.queues)) {
    for (const job of await queue.getJobs(states as never)) {
      if (job.data.runId === run.id) ids.push(job.id as string);
    }
  }
  return ids.sort();
}

/**
 * Makes the api's flow adds fail (as a Redis connection lost in between would) the next `n`
 * times, or wait `delayMs` first; `settled()` waits for the calls made so far to end,
 * `restore()` puts the producer back.
 */
function interceptFlowAdds(flow: FlowProducer, opts: { fail?: number; delayMs?: number }) {
  const { add, addBulk } = flow;
  let failures = opts.fail ?? 0;
  const calls: Promise<unknown>[] = [];
  const intercept =
    <A extends unknown[], R>(real: (...args: A) => Promise<R>) =>
    (...args: A): Promise<R> => {
      const call = (async () => {
        if (opts.delayMs) await new Promise((resolve) => setTimeout(resolve, opts.delayMs));
        if (failures > 0) {
          failures -= 1;
          throw new Error("Connection is closed.");
        }
        return real.apply(flow, args);
      })();
      calls.push(call.catch(() => {}));
      return call;
    };
  flow.add = intercept(add);
  flow.addBulk = intercept(addBulk);
  return {
    settled: () => Promise.all(calls),
    restore() {
      flow.add = add;
      flow.addBulk = addBulk;
    },
  };
}

function reconciler(graceMs: number) {
  return createReconciler(
    {
      db: api.database.db,
      redisUrl: api.redis.url,
      prefix: api.redis.prefix,
      logger: pino({ level: "silent" }),
    },
    { intervalMs: 0, graceMs },
  );
}

describe("POST /v1/runs and its flow", () => {
  it("answers once the run is committed: a GET right after says queued, and its jobs follow", async () => {
    const run = await submit();
    const read = (await api.app.inject({ url: `/v1/runs/${run.id}` })).json();
    expect(read.status).toBe("queued");
    expect(read.stages.map((s: { status: string }) => s.status)).toEqual([
      "queued",
      "queued",
      "queued",
    ]);
    await waitForJobs(api.queues, run);
    const ppo = run.stages.find((s) => s.kind === "ppo");
    expect(await (await api.queues.ppo.getJob(ppo?.id as string))?.getState()).toBe(
      "waiting-children",
    );
    expect(await jobsOf(run)).toEqual(run.stages.map((s) => s.id).sort());
  });

  it("tries a flow that Redis did not take again: the run gets one job per stage", async () => {
    const intercepted = interceptFlowAdds(api.flow, { fail: 1 });
    try {
      const run = await submit();
      await waitForJobs(api.queues, run);
      expect(await jobsOf(run)).toEqual(run.stages.map((s) => s.id).sort());
    } finally {
      intercepted.restore();
    }
  });

  it("leaves a run whose flow was lost to the reconciler, which queues it once, past the grace", async () => {
    // The first attempt and its one retry fail: the dispatcher gives up and says so.
    const intercepted = interceptFlowAdds(api.flow, { fail: 2 });
    const events = async (id: string) =>
      (await api.app.inject({ url: `/v1/runs/${id}/events` })).json().data as {
        level: string;
        message: string;
      }[];
    let run: RunJson;
    try {
      run = await submit();
      await vi.waitFor(
        async () => {
          const warned = (await events(run.id)).some((e) => /did not take/.test(e.message));
          if (!warned) throw new Error("the dispatcher has not given up yet");
        },
        { timeout: 5000, interval: 20 },
      );
    } finally {
      intercepted.restore();
    }
    expect(await jobsOf(run)).toEqual([]);
    const read = (await api.app.inject({ url: `/v1/runs/${run.id}` })).json();
    expect(read.status).toBe("queued");

    // Younger than the grace: left alone (its flow might still be on its way).
    const young = reconciler(60_000);
    try {
      expect((await young.runOnce()).requeued).toEqual([]);
    } finally {
      await young.close();
    }
    expect(await jobsOf(run)).toEqual([]);

    const past = reconciler(0);
    try {
      const report = await past.runOnce();
      expect(report.requeued.sort()).toEqual(run.stages.map((s) => s.id).sort());
      // A second pass finds every job in place and queues nothing more.
      expect((await past.runOnce()).requeued).toEqual([]);
    } finally {
      await past.close();
    }
    expect(await jobsOf(run)).toEqual(run.stages.map((s) => s.id).sort());
    const ppo = run.stages.find((s) => s.kind === "ppo");
    expect(await (await api.queues.ppo.getJob(ppo?.id as string))?.getState()).toBe(
      "waiting-children",
    );
    expect((await events(run.id)).filter((e) => /queued again/.test(e.message))).toHaveLength(3);
  });

  it("removes the jobs of a run cancelled right after its 201, even those still on their way", async () => {
    const intercepted = interceptFlowAdds(api.flow, { delayMs: 200 });
    try {
      const run = await submit();
      const cancelled = await api.app.inject({ method: "POST", url: `/v1/runs/${run.id}/cancel` });
      expect(cancelled.statusCode).toBe(200);
      expect(cancelled.json().status).toBe("cancelled");
      // However late the flow got to Redis, none of its jobs are left.
      await intercepted.settled();
      expect(await jobsOf(run)).toEqual([]);
    } finally {
      intercepted.restore();
    }
  });
});

import { addEvent } from "@chatrl/db";
import { STAGE_QUEUES } from "@chatrl/queue";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createDatasetId,
  runBody,
  startTestApi,
  type TestApi,
  uploadDataset,
  waitForJobs,
} from "./helpers.ts";

let api: TestApi;
let datasetId: string;

beforeAll(async () => {
  api = await startTestApi();
  datasetId = await createDatasetId(api.app);
});
afterAll(async () => {
  await api?.close();
});

function postRun(body: unknown, headers: Record<string, string> = {}) {
  return api.app.inject({ method: "POST", url: "/v1/runs", payload: body as object, headers });
}

async function queuedJobIds(): Promise<string[]> {
  const jobs = await api.queues.sft.getJobs([
    "waiting",
    "active",
    "delayed",
    "completed",
    "failed",
  ]);
  return jobs.map((job) => job.id!).sort();
}

/** A refused run: the status, the param the error names, and no run row written. */
async function expectRefused(body: unknown, status: number, param: string | null, message: RegExp) {
  const runsBefore = await api.database.db.prisma.run.count();
  const jobsBefore = await queuedJobIds();
  const response = await postRun(body);
  expect(response.statusCode, response.body).toBe(status);
  const { error } = response.json();
  expect(error.param).toBe(param);
  expect(error.message).toMatch(message);
  expect(await api.database.db.prisma.run.count()).toBe(runsBefore);
  expect(await queuedJobIds()).toEqual(jobsBefore);
}

describe("POST /v1/runs", () => {
  it("writes the run with its sft stage and queues one job whose id is the stage id", async () => {
    const jobsBefore = await queuedJobIds();
    const response = await postRun(runBody(datasetId));
    expect(response.statusCode).toBe(201);
    const run = response.json();
    expect(run).toMatchObject({
      object: "run",
      name: "tiny-sft",
      status: "queued",
      finished_at: null,
      error: null,
      warnings: [],
    });
    expect(run.id).toMatch(/^run_[0-9a-f]{24}$/);
    expect(run.stages).toHaveLength(1);
    expect(run.stages[0]).toMatchObject({
      kind: "sft",
      status: "queued",
      max_steps: 20,
      progress: 0,
      tokens: 0,
      cost_usd: 0,
      started_at: null,
    });

    const stageId = run.stages[0].id;
    await waitForJobs(api.queues, run);
    expect(await queuedJobIds()).toEqual([...jobsBefore, stageId].sort());
    const job = await api.queues.sft.getJob(stageId);
    expect(job?.name).toBe("sft");
    expect(job?.queueName).toBe(STAGE_QUEUES.sft);
    expect(job?.data).toEqual({ runId: run.id, stageId, kind: "sft" });
    expect(job?.opts.attempts).toBe(1);
    expect(await api.queues.reward.count()).toBe(0);
    expect(await api.queues.ppo.count()).toBe(0);

    const stored = await api.database.db.prisma.run.findUniqueOrThrow({ where: { id: run.id } });
    expect(stored.spec).toMatchObject({
      data_split: [10, 0, 0],
      seed: 42,
      stages: { sft: { max_steps: 20, batch_size: 4, learning_rate: 0.003, epochs: 1 } },
    });
  });

  it("returns the first run for a retried Idempotency-Key and queues nothing more", async () => {
    const headers = { "idempotency-key": "retry-me-1" };
    const first = await postRun(runBody(datasetId, { name: "idem" }), headers);
    expect(first.statusCode).toBe(201);
    await waitForJobs(api.queues, first.json());
    const jobsAfterFirst = await queuedJobIds();
    const runsAfterFirst = await api.database.db.prisma.run.count();

    const second = await postRun(runBody(datasetId, { name: "idem" }), headers);
    expect(second.statusCode).toBe(200);
    expect(second.json().id).toBe(first.json().id);
    expect(second.json().stages[0].id).toBe(first.json().stages[0].id);
    expect(await queuedJobIds()).toEqual(jobsAfterFirst);
    expect(await api.database.db.prisma.run.count()).toBe(runsAfterFirst);

    const different = await postRun(runBody(datasetId, { name: "other" }), headers);
    expect(different.statusCode).toBe(409);
    expect(different.json().error).toMatchObject({
      param: "idempotency-key",
      code: "idempotency_key_reused",
    });
  });

  it("creates one run and one job when the same Idempotency-Key arrives twice at once", async () => {
    const headers = { "idempotency-key": "concurrent-1" };
    const body = runBody(datasetId, { name: "concurrent" });
    const runsBefore = await api.database.db.prisma.run.count();
    const jobsBefore = await queuedJobIds();
    const [a, b] = await Promise.all([postRun(body, headers), postRun(body, headers)]);
    expect([a.statusCode, b.statusCode].sort()).toEqual(expect.arrayContaining([201]));
    expect(a.json().id).toBe(b.json().id);
    expect(await api.database.db.prisma.run.count()).toBe(runsBefore + 1);
    await waitForJobs(api.queues, a.json());
    expect(await queuedJobIds()).toEqual([...jobsBefore, a.json().stages[0].id].sort());
  });

  it("refuses unknown fields anywhere, naming the field", async () => {
    await expectRefused(
      { ...runBody(datasetId), colour: "blue" },
      400,
      "colour",
      /Unknown field 'colour'/,
    );
    await expectRefused(
      runBody(datasetId, { stages: { sft: { max_steps: 5, lr: 0.1 } } }),
      400,
      "stages.sft.lr",
      /Unknown field 'stages.sft.lr'/,
    );
    await expectRefused(
      runBody(datasetId, { datasets: [{ id: datasetId, weigth: 2 }] }),
      400,
      "datasets[0].weigth",
      /Unknown field 'datasets\[0\].weigth'/,
    );
    await expectRefused(
      runBody(datasetId, { model: { preset: "tiny", layers: 3 } }),
      400,
      "model.layers",
      /Unknown field 'model.layers'/,
    );
  });

  it("refuses missing or malformed required fields", async () => {
    const { name: _, ...noName } = runBody(datasetId);
    await expectRefused(noName, 400, "name", /Missing required field 'name'/);
    await expectRefused(
      runBody(datasetId, { datasets: [] }),
      400,
      "datasets",
      /'datasets' must NOT have fewer than 1 items/,
    );
    await expectRefused(runBody(datasetId, { model: {} }), 400, "model", /exactly one of/);
    await expectRefused(
      runBody(datasetId, { model: { preset: "tiny", checkpoint_id: `ckpt_${"a".repeat(24)}` } }),
      400,
      "model",
      /exactly one of 'preset' or 'checkpoint_id'/,
    );
    await expectRefused(
      runBody(datasetId, { model: { preset: "gpt-5" } }),
      400,
      "model.preset",
      /must be one of: tiny, small/,
    );
    const response = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      headers: { "content-type": "application/json" },
      payload: '{"name": "broken",',
    });
    expect(response.statusCode).toBe(400);
    expect(response.json().error.message).toBeTruthy();
  });

  it("refuses negative or absurd hyper-parameters, naming the parameter", async () => {
    const sft = (values: Record<string, unknown>) =>
      runBody(datasetId, { stages: { sft: values } });
    await expectRefused(sft({ max_steps: 0 }), 400, "stages.sft.max_steps", />= 1/);
    await expectRefused(sft({ max_steps: 1e9 }), 400, "stages.sft.max_steps", /<= 1000000/);
    await expectRefused(sft({ max_steps: 2.5 }), 400, "stages.sft.max_steps", /integer/);
    await expectRefused(sft({ max_steps: "100" }), 400, "stages.sft.max_steps", /integer/);
    await expectRefused(sft({ batch_size: -8 }), 400, "stages.sft.batch_size", />= 1/);
    await expectRefused(sft({ batch_size: 100000 }), 400, "stages.sft.batch_size", /<= 4096/);
    await expectRefused(sft({ learning_rate: 0 }), 400, "stages.sft.learning_rate", /> 0/);
    await expectRefused(sft({ learning_rate: 3 }), 400, "stages.sft.learning_rate", /<= 1/);
    await expectRefused(sft({ max_seq_len: 4 }), 400, "stages.sft.max_seq_len", />= 8/);
    await expectRefused(
      runBody(datasetId, { compute: { price_per_hour: -1 } }),
      400,
      "compute.price_per_hour",
      />= 0/,
    );
    await expectRefused(
      runBody(datasetId, { datasets: [{ id: datasetId, weight: 0 }] }),
      400,
      "datasets[0].weight",
      /> 0/,
    );
    await expectRefused(
      runBody(datasetId, { data_split: [1, 1] }),
      400,
      "data_split",
      /fewer than 3/,
    );
    await expectRefused(
      runBody(datasetId, { data_split: [2, -1, 4] }),
      400,
      "data_split[1]",
      />= 0/,
    );
    await expectRefused(
      runBody(datasetId, { data_split: [0, 5, 5] }),
      422,
      "data_split",
      /sft share/,
    );
  });

  it("refuses a run its model or a worker cannot take: sequences past the context, blends of no rows or too many", async () => {
    await expectRefused(
      runBody(datasetId, { stages: { sft: { max_seq_len: 256 } } }),
      422,
      "stages.sft.max_seq_len",
      /longer than the model's context of 128 tokens/,
    );
    await expectRefused(
      runBody(datasetId, { datasets: [{ id: datasetId, weight: 0.1 }] }),
      422,
      "data_split",
      /give the sft stage 0 rows/,
    );
    await expectRefused(
      runBody(datasetId, { datasets: [{ id: datasetId, weight: 101 }] }),
      400,
      "datasets[0].weight",
      /<= 100/,
    );
    const rows = Array.from({ length: 10_001 }, (_, i) => `{"prompt":"q${i}","response":"a"}`);
    const big = (await uploadDataset(api.app, rows.join("\n"), "big")).json().id;
    await expectRefused(
      runBody(big, { datasets: [{ id: big, weight: 100 }] }),
      422,
      "datasets",
      /1000100 rows; at most 1000000/,
    );
  });

  it("answers 404 naming an unknown dataset or checkpoint", async () => {
    const missing = `ds_${"f".repeat(24)}`;
    await expectRefused(
      runBody(datasetId, { datasets: [{ id: datasetId }, { id: missing }] }),
      404,
      "datasets[1].id",
      new RegExp(`No dataset with id '${missing}'`),
    );
    await expectRefused(
      runBody(datasetId, { model: { checkpoint_id: `ckpt_${"e".repeat(24)}` } }),
      404,
      "model.checkpoint_id",
      /No checkpoint/,
    );
    await expectRefused(
      runBody(datasetId, { datasets: [{ id: "not-an-id" }] }),
      400,
      "datasets[0].id",
      /must match pattern/,
    );
  });
});

describe("reading runs", () => {
  it("pages through runs newest first with after and limit", async () => {
    const created: string[] = [];
    for (let i = 0; i < 3; i++)
      created.push((await postRun(runBody(datasetId, { name: `page-${i}` }))).json().id);
    const all = (await api.app.inject({ url: "/v1/runs?limit=100" })).json();
    expect(all.has_more).toBe(false);
    expect(all.data.slice(0, 3).map((r: { id: string }) => r.id)).toEqual(created.reverse());

    const seen: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = (
        await api.app.inject({ url: `/v1/runs?limit=2${after ? `&after=${after}` : ""}` })
      ).json();
      expect(page.object).toBe("list");
      expect(page.data.length).toBeLessThanOrEqual(2);
      seen.push(...page.data.map((r: { id: string }) => r.id));
      if (!page.has_more) break;
      after = page.data.at(-1).id;
    }
    expect(seen).toEqual(all.data.map((r: { id: string }) => r.id));

    const defaults = (await api.app.inject({ url: "/v1/runs" })).json();
    expect(defaults.data.length).toBe(Math.min(20, all.data.length));
    expect((await api.app.inject({ url: "/v1/runs?limit=0" })).statusCode).toBe(400);
    const unknownCursor = await api.app.inject({ url: `/v1/runs?after=run_${"9".repeat(24)}` });
    // An empty page would read as "no more runs"; a cursor that names no run is a bad request.
    expect(unknownCursor.statusCode).toBe(400);
    expect(unknownCursor.json().error).toMatchObject({ param: "after", code: "invalid_cursor" });
    expect((await api.app.inject({ url: "/v1/runs?limit=101" })).statusCode).toBe(400);
  });

  it("gets one run, and answers 404 for an unknown one", async () => {
    const run = (await postRun(runBody(datasetId))).json();
    const got = await api.app.inject({ url: `/v1/runs/${run.id}` });
    expect(got.json()).toEqual(run);
    expect(got.headers["content-type"]).toBe("application/json; charset=utf-8");
    // Readers sharing a query (coalesceReads) share its serialized answer: the same bytes as
    // the submission's own answer, whichever reader serialized it.
    const together = await Promise.all(
      Array.from({ length: 5 }, () => api.app.inject({ url: `/v1/runs/${run.id}` })),
    );
    for (const answer of together) expect(answer.body).toBe(got.body);
    expect(got.body).toBe(JSON.stringify(run));
    const missing = await api.app.inject({ url: `/v1/runs/run_${"0".repeat(24)}` });
    expect(missing.statusCode).toBe(404);
    expect(missing.json().error).toMatchObject({ type: "not_found_error", param: "id" });
    for (const suffix of ["events", "metrics", "checkpoints"]) {
      const sub = await api.app.inject({ url: `/v1/runs/run_${"0".repeat(24)}/${suffix}` });
      expect(sub.statusCode).toBe(404);
    }
  });

  it("lists a run's events, newest first, a page at a time", async () => {
    const run = (await postRun(runBody(datasetId))).json();
    const events = (await api.app.inject({ url: `/v1/runs/${run.id}/events` })).json();
    expect(events.object).toBe("list");
    expect(events.data[0]).toMatchObject({
      object: "run.event",
      level: "info",
      message: "Queued stages: sft",
    });
    for (const message of ["step 1", "step 2", "step 3"]) {
      await addEvent(api.database.db.prisma, run.id, "info", message);
    }
    const first = (await api.app.inject({ url: `/v1/runs/${run.id}/events?limit=2` })).json();
    expect(first.data.map((e: { message: string }) => e.message)).toEqual(["step 3", "step 2"]);
    expect(first.has_more).toBe(true);
    const next = (
      await api.app.inject({ url: `/v1/runs/${run.id}/events?limit=2&after=${first.data[1].id}` })
    ).json();
    expect(next.data.map((e: { message: string }) => e.message)).toEqual([
      "step 1",
      "Queued stages: sft",
    ]);
    expect(next.has_more).toBe(false);
    const badCursor = await api.app.inject({ url: `/v1/runs/${run.id}/events?after=abc` });
    expect(badCursor.statusCode).toBe(400);
    expect(badCursor.json().error.param).toBe("after");
  });

  it("lists metrics, filtered by stage and name", async () => {
    const run = (await postRun(runBody(datasetId))).json();
    const stageId = run.stages[0].id;
    const prisma = api.database.db.prisma;
    await prisma.metric.createMany({
      data: [
        { stageId, step: 1, name: "loss", value: 2.5 },
        { stageId, step: 1, name: "lr", value: 0.001 },
        { stageId, step: 2, name: "loss", value: 2.0 },
      ],
    });
    const all = (await api.app.inject({ url: `/v1/runs/${run.id}/metrics` })).json();
    expect(all.data).toHaveLength(3);
    const loss = (
      await api.app.inject({ url: `/v1/runs/${run.id}/metrics?stage=sft&name=loss` })
    ).json();
    expect(loss.data.map((m: { step: number; value: number }) => [m.step, m.value])).toEqual([
      [1, 2.5],
      [2, 2.0],
    ]);
    expect(loss.data[0]).toMatchObject({ stage: "sft", name: "loss" });
    expect(typeof loss.data[0].time).toBe("number");
    const none = (await api.app.inject({ url: `/v1/runs/${run.id}/metrics?stage=ppo` })).json();
    expect(none.data).toEqual([]);
    const bad = await api.app.inject({ url: `/v1/runs/${run.id}/metrics?stage=dpo` });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.param).toBe("stage");
  });
});

describe("POST /v1/runs/{id}/cancel", () => {
  it("cancels a queued run and removes its job from the queue", async () => {
    const run = (await postRun(runBody(datasetId))).json();
    const stageId = run.stages[0].id;
    await waitForJobs(api.queues, run);

    const response = await api.app.inject({ method: "POST", url: `/v1/runs/${run.id}/cancel` });
    expect(response.statusCode).toBe(200);
    const cancelled = response.json();
    expect(cancelled.status).toBe("cancelled");
    expect(cancelled.stages[0].status).toBe("cancelled");
    expect(cancelled.finished_at).toEqual(expect.any(Number));
    expect(await api.queues.sft.getJob(stageId)).toBeUndefined();

    const again = await api.app.inject({ method: "POST", url: `/v1/runs/${run.id}/cancel` });
    expect(again.statusCode).toBe(200);
    expect(again.json().status).toBe("cancelled");
  });

  it("leaves a finished run as it is", async () => {
    const run = (await postRun(runBody(datasetId))).json();
    await api.database.db.prisma.run.update({
      where: { id: run.id },
      data: { status: "succeeded" },
    });
    const response = await api.app.inject({ method: "POST", url: `/v1/runs/${run.id}/cancel` });
    expect(response.json().status).toBe("succeeded");
  });

  it("answers 404 for an unknown run", async () => {
    const response = await api.app.inject({
      method: "POST",
      url: `/v1/runs/run_${"1".repeat(24)}/cancel`,
    });
    expect(response.statusCode).toBe(404);
  });
});

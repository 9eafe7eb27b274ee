import { addMetrics, createRun, finishStage, recordStageProgress, startStage } from "@chatrl/db";
import { enqueueRun } from "@chatrl/queue";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestApi, type TestApi } from "./helpers.ts";

let api: TestApi;

beforeAll(async () => {
  api = await startTestApi();
});
afterAll(async () => {
  await api?.close();
});

/** A finished SFT + reward + PPO run, its stages started on `day` (UTC). */
async function finishedRun(name: string, day: string) {
  const p = api.database.db.prisma;
  const run = await createRun(p, {
    name,
    spec: { name },
    stages: [
      { kind: "sft", maxSteps: 2 },
      { kind: "reward", maxSteps: 2 },
      { kind: "ppo", maxSteps: 2 },
    ],
  });
  for (const [i, stage] of run.stages.entries()) {
    await startStage(p, stage.id, "cpu");
    await recordStageProgress(p, stage.id, {
      step: 2,
      progress: 1,
      wallSeconds: 10 * (i + 1),
      deviceSeconds: 8 * (i + 1),
      tokens: 100 * (i + 1),
      costUsd: 0.01 * (i + 1),
    });
  }
  const ppo = run.stages[2];
  await addMetrics(p, ppo.id, 1, { time_generation_s: 1, time_scoring_s: 0.5, time_training_s: 2 });
  await addMetrics(p, ppo.id, 2, { time_generation_s: 3, time_scoring_s: 0.5, time_training_s: 2 });
  for (const stage of run.stages) await finishStage(p, stage.id, { status: "succeeded" });
  await p.run.update({ where: { id: run.id }, data: { createdAt: new Date(`${day}T08:00:00Z`) } });
  const start = { sft: "08:00:02", reward: "08:00:04", ppo: "08:01:00" };
  for (const stage of run.stages) {
    await p.stage.update({
      where: { id: stage.id },
      data: {
        startedAt: new Date(`${day}T${start[stage.kind]}Z`),
        finishedAt: new Date(`${day}T${stage.kind === "ppo" ? "08:02:00" : "08:00:30"}Z`),
      },
    });
  }
  return run;
}

describe("dashboard queries", () => {
  it("sums costs per day within a date range and refuses a day that does not exist", async () => {
    await finishedRun("march", "2030-03-01");
    await finishedRun("april", "2030-04-01");
    const march = await api.app.inject({
      url: "/v1/dashboard/costs?group_by=day&from=2030-03-01&to=2030-03-31",
    });
    expect(march.statusCode).toBe(200);
    expect(march.json().data.map((r: { key: string }) => r.key)).toEqual(["2030-03-01"]);
    expect(march.json().total.cost_usd).toBeCloseTo(0.06, 10);

    const bad = await api.app.inject({ url: "/v1/dashboard/costs?from=2030-02-30" });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.param).toBe("from");
    const backwards = await api.app.inject({
      url: "/v1/dashboard/costs?from=2030-03-02&to=2030-03-01",
    });
    expect(backwards.statusCode).toBe(400);
    const malformed = await api.app.inject({ url: "/v1/dashboard/costs?to=yesterday" });
    expect(malformed.statusCode).toBe(400);
    expect(malformed.json().error.param).toBe("to");
  });

  it("answers where a run's time went, stage by stage, and 404 for an unknown run", async () => {
    const run = await finishedRun("timed", "2030-05-05");
    const response = await api.app.inject({ url: `/v1/runs/${run.id}/timing` });
    expect(response.statusCode).toBe(200);
    const body = response.json();
    expect(body.object).toBe("run.timing");
    expect(body.stages.map((s: { kind: string }) => s.kind)).toEqual(["sft", "reward", "ppo"]);
    const [sft, reward, ppo] = body.stages;
    expect(sft.queue_wait_seconds).toBe(2);
    expect(reward.queue_wait_seconds).toBe(4);
    // PPO became ready when its last parent finished (08:00:30) and started at 08:01:00.
    expect(ppo.queue_wait_seconds).toBe(30);
    expect(ppo.phase_seconds).toEqual({ generation: 4, scoring: 1, training: 4 });
    expect(ppo.tokens_per_s).toBeCloseTo(300 / 24, 10);

    const unknown = await api.app.inject({ url: "/v1/runs/run_000000000000000000000000/timing" });
    expect(unknown.statusCode).toBe(404);
  });

  it("sums time by stage kind for one run or all, in pipeline order", async () => {
    const run = await finishedRun("by-kind", "2030-06-06");
    const one = await api.app.inject({
      url: `/v1/dashboard/time?group_by=stage&run_id=${run.id}`,
    });
    expect(one.statusCode).toBe(200);
    expect(one.json().data.map((r: { key: string; stages: number }) => [r.key, r.stages])).toEqual([
      ["sft", 1],
      ["reward", 1],
      ["ppo", 1],
    ]);
    const days = await api.app.inject({
      url: "/v1/dashboard/time?from=2030-06-06&to=2030-06-06",
    });
    expect(days.json().group_by).toBe("day");
    expect(days.json().data).toEqual([
      {
        key: "2030-06-06",
        runs: 1,
        stages: 3,
        queue_wait_seconds: 36,
        wall_seconds: 60,
        device_seconds: 48,
        tokens: 600,
        tokens_per_s: 600 / 48,
        cost_usd: expect.closeTo(0.06, 10),
        phase_seconds: { generation: 4, scoring: 1, training: 4 },
      },
    ]);
  });

  it("lists only the runs in the status asked for", async () => {
    const p = api.database.db.prisma;
    await createRun(p, { name: "still queued", spec: {}, stages: [{ kind: "sft", maxSteps: 1 }] });
    const queued = (await api.app.inject({ url: "/v1/runs?status=queued" })).json();
    expect(queued.data.map((r: { name: string }) => r.name)).toEqual(["still queued"]);
    const succeeded = (await api.app.inject({ url: "/v1/runs?status=succeeded&limit=100" })).json();
    expect(succeeded.data.length).toBeGreaterThan(0);
    expect(succeeded.data.every((r: { status: string }) => r.status === "succeeded")).toBe(true);
    expect((await api.app.inject({ url: "/v1/runs?status=lost" })).statusCode).toBe(400);
  });

  it("counts the jobs in each stage queue", async () => {
    const p = api.database.db.prisma;
    const run = await createRun(p, {
      name: "queued jobs",
      spec: {},
      stages: [
        { kind: "sft", maxSteps: 1 },
        { kind: "reward", maxSteps: 1 },
        { kind: "ppo", maxSteps: 1 },
      ],
    });
    await enqueueRun(api.flow, run);
    const response = await api.app.inject({ url: "/v1/dashboard/queues" });
    expect(response.statusCode).toBe(200);
    const byQueue = Object.fromEntries(
      response.json().data.map((q: { queue: string }) => [q.queue, q]),
    );
    expect(byQueue.sft).toMatchObject({ waiting: 1, active: 0, failed: 0 });
    expect(byQueue.reward).toMatchObject({ waiting: 1 });
    expect(byQueue.ppo).toMatchObject({ waiting: 0, waiting_children: 1 });
  });
});

describe("dashboard page", () => {
  it("serves the page, its scripts, styles and uPlot, with no inline script or style", async () => {
    const page = await api.app.inject({ url: "/dashboard" });
    expect(page.statusCode).toBe(200);
    expect(page.headers["content-type"]).toMatch(/text\/html/);
    // A strict CSP (script-src 'self'; style-src 'self') blocks inline code: there is none.
    expect(page.body).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(page.body).not.toMatch(/<style|\sstyle=|\son[a-z]+=/i);
    const assets = [...page.body.matchAll(/(?:src|href)="(\/dashboard\/assets\/[^"]+)"/g)].map(
      (m) => m[1],
    );
    expect(assets).toEqual(
      expect.arrayContaining([
        "/dashboard/assets/uplot.min.js",
        "/dashboard/assets/uplot.min.css",
        "/dashboard/assets/dashboard.js",
        "/dashboard/assets/dashboard.css",
      ]),
    );
    for (const url of assets) {
      const asset = await api.app.inject({ url });
      expect(asset.statusCode, url).toBe(200);
      expect(asset.headers["content-type"]).toMatch(url.endsWith(".js") ? /javascript/ : /css/);
    }
    const uplot = await api.app.inject({ url: "/dashboard/assets/uplot.min.js" });
    expect(uplot.body).toContain("uPlot");
    // Every module the entry point imports is served too.
    for (const file of ["api.js", "dom.js", "charts.js", "runs.js", "run.js", "costs.js"]) {
      expect((await api.app.inject({ url: `/dashboard/assets/${file}` })).statusCode).toBe(200);
    }
  });

  it("answers an unchanged asset with 304 and refuses names outside its list", async () => {
    const first = await api.app.inject({ url: "/dashboard/assets/dashboard.js" });
    const again = await api.app.inject({
      url: "/dashboard/assets/dashboard.js",
      headers: { "if-none-match": first.headers.etag as string },
    });
    expect(again.statusCode).toBe(304);
    expect((await api.app.inject({ url: "/dashboard/assets/app.ts" })).statusCode).toBe(404);
    const traversal = await api.app.inject({ url: "/dashboard/assets/..%2F..%2Fapp.ts" });
    expect([400, 404]).toContain(traversal.statusCode);
  });

  it("never writes server text into the page as HTML", async () => {
    // The scripts build the DOM from text nodes only (innerHTML would parse a run's name).
    for (const file of ["dashboard.js", "dom.js", "runs.js", "run.js", "costs.js", "charts.js"]) {
      const body = (await api.app.inject({ url: `/dashboard/assets/${file}` })).body;
      expect(body, file).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write/);
    }
  });
});

import { createRun, finishStage, startStage } from "@chatrl/db";
import { enqueueRun } from "@chatrl/queue";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { promSample } from "../../../test/support/prometheus.ts";
import { startTestApi, type TestApi } from "./helpers.ts";

describe("Prometheus metrics of the api", () => {
  let api: TestApi;
  beforeAll(async () => {
    api = await startTestApi({ CHATRL_API_KEYS: "sk-metrics" });
  });
  afterAll(async () => api?.close());

  it("counts requests and their latency by route template and status, with no key", async () => {
    const auth = { authorization: "Bearer sk-metrics" };
    await api.app.inject({ url: "/v1/runs", headers: auth });
    await api.app.inject({ url: "/v1/runs/run_000000000000000000000001", headers: auth });
    await api.app.inject({ url: "/v1/runs/run_000000000000000000000002", headers: auth });
    await api.app.inject({ url: "/no/such/path/123" });
    const response = await api.app.inject({ url: "/metrics" });
    expect(response.statusCode).toBe(200);
    expect(response.headers["content-type"]).toMatch(/^text\/plain; version=0.0.4/);
    const text = response.body;
    const labels = { route: "/v1/runs/:id", status_code: "404", method: "GET" };
    expect(promSample(text, "http_requests_total", labels)).toBe(2);
    expect(promSample(text, "http_request_duration_seconds_count", labels)).toBe(2);
    expect(promSample(text, "http_requests_total", { route: "/v1/runs", status_code: "200" })).toBe(
      1,
    );
    // Unmatched paths share one series, so probes cannot blow up the label set.
    expect(promSample(text, "http_requests_total", { route: "unmatched" })).toBe(1);
    expect(text).not.toContain("/no/such/path");
    expect(promSample(text, "process_resident_memory_bytes")).toBeGreaterThan(0);
    expect(promSample(text, "nodejs_heap_size_used_bytes")).toBeGreaterThan(0);
    expect(text).toMatch(/service="api"/);
  });

  it("shows queue depths per stage queue and stages and runs by status", async () => {
    const p = api.database.db.prisma;
    const queued = await createRun(p, {
      name: "waits",
      spec: {},
      stages: [
        { kind: "sft", maxSteps: 1 },
        { kind: "ppo", maxSteps: 1 },
      ],
    });
    await enqueueRun(api.flow, queued);
    const failed = await createRun(p, {
      name: "breaks",
      spec: {},
      stages: [{ kind: "reward", maxSteps: 1 }],
    });
    await startStage(p, failed.stages[0].id, "cpu");
    await finishStage(p, failed.stages[0].id, { status: "failed", error: "boom" });

    const text = (await api.app.inject({ url: "/metrics" })).body;
    expect(promSample(text, "chatrl_queue_up")).toBe(1);
    expect(promSample(text, "chatrl_queue_jobs", { queue: "sft", state: "waiting" })).toBe(1);
    expect(promSample(text, "chatrl_queue_jobs", { queue: "ppo", state: "waiting_children" })).toBe(
      1,
    );
    expect(promSample(text, "chatrl_queue_jobs", { queue: "reward", state: "failed" })).toBe(0);
    expect(promSample(text, "chatrl_stages", { kind: "sft", status: "queued" })).toBe(1);
    expect(promSample(text, "chatrl_stages", { kind: "reward", status: "failed" })).toBe(1);
    expect(promSample(text, "chatrl_stages_started", { kind: "reward" })).toBe(1);
    expect(promSample(text, "chatrl_stages_started", { kind: "sft" })).toBe(0);
    expect(promSample(text, "chatrl_runs", { status: "failed" })).toBe(1);
    expect(promSample(text, "chatrl_database_up")).toBe(1);
  });
});

describe("bull-board at /admin/queues", () => {
  let api: TestApi;
  beforeAll(async () => {
    api = await startTestApi({ CHATRL_API_KEYS: "sk-board" });
  });
  afterAll(async () => api?.close());

  const basic = (user: string, password: string) =>
    `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

  it("asks a browser for the key with basic auth and refuses a wrong one", async () => {
    const none = await api.app.inject({ url: "/admin/queues" });
    expect(none.statusCode).toBe(401);
    expect(none.headers["www-authenticate"]).toMatch(/^Basic realm="chatrl queues"/);
    expect(none.json().error.code).toBe("invalid_api_key");
    const wrong = await api.app.inject({
      url: "/admin/queues/api/queues",
      headers: { authorization: basic("admin", "sk-nope") },
    });
    expect(wrong.statusCode).toBe(401);
  });

  it("shows the board and the stage queues' jobs to the key, as basic password or bearer", async () => {
    const p = api.database.db.prisma;
    const run = await createRun(p, {
      name: "board",
      spec: {},
      stages: [{ kind: "sft", maxSteps: 1 }],
    });
    await enqueueRun(api.flow, run);
    const page = await api.app.inject({
      url: "/admin/queues",
      headers: { authorization: basic("", "sk-board") },
    });
    expect(page.statusCode).toBe(200);
    expect(page.body).toContain("chatrl queues");
    const assets = [...page.body.matchAll(/src="([^"]+\.js)"/g)].map((m) => m[1]);
    expect(assets.length).toBeGreaterThan(0);
    const script = await api.app.inject({
      url: `/admin/queues/${assets[0]}`,
      headers: { authorization: basic("ops", "sk-board") },
    });
    expect(script.statusCode).toBe(200);

    const queues = await api.app.inject({
      url: "/admin/queues/api/queues?activeQueue=sft&status=waiting",
      headers: { authorization: "Bearer sk-board" },
    });
    expect(queues.statusCode).toBe(200);
    const sft = queues.json().queues.find((q: { name: string }) => q.name === "sft");
    expect(sft.counts.waiting).toBe(1);
    expect(sft.jobs.map((j: { id: string }) => j.id)).toEqual([run.stages[0].id]);
  });

  it("retries a failed job for the key, and refuses changes a foreign page starts", async () => {
    const p = api.database.db.prisma;
    const run = await createRun(p, {
      name: "retry",
      spec: {},
      stages: [{ kind: "reward", maxSteps: 1 }],
    });
    await enqueueRun(api.flow, run);
    const job = await api.queues.reward.getJob(run.stages[0].id);
    // Fail it as a worker would (take it from the wait list with a lock token, then fail it).
    const { Worker } = await import("bullmq");
    const worker = new Worker("reward", null, {
      connection: api.queues.reward.opts.connection,
      prefix: api.redis.prefix,
    });
    const taken = await worker.getNextJob("token-1");
    expect(taken?.id).toBe(job?.id);
    await taken?.moveToFailed(new Error("out of memory"), "token-1");
    await worker.close();
    expect(await api.queues.reward.getJobCounts("failed")).toEqual({ failed: 1 });

    const url = "/admin/queues/api/queues/reward/retry/failed";
    const foreign = await api.app.inject({
      method: "PUT",
      url,
      headers: { authorization: "Bearer sk-board", "sec-fetch-site": "cross-site" },
    });
    expect(foreign.statusCode).toBe(403);
    const retried = await api.app.inject({
      method: "PUT",
      url,
      headers: { authorization: basic("ops", "sk-board"), "sec-fetch-site": "same-origin" },
    });
    expect(retried.statusCode).toBe(200);
    expect(await api.queues.reward.getJobCounts("failed", "waiting")).toEqual({
      failed: 0,
      waiting: 1,
    });
  });
});

describe("bull-board without keys", () => {
  let api: TestApi;
  beforeAll(async () => {
    api = await startTestApi();
  });
  afterAll(async () => api?.close());

  it("is open, as the rest of the api is", async () => {
    expect((await api.app.inject({ url: "/admin/queues" })).statusCode).toBe(200);
    const queues = await api.app.inject({ url: "/admin/queues/api/queues" });
    expect(
      queues
        .json()
        .queues.map((q: { name: string }) => q.name)
        .sort(),
    ).toEqual(["ppo", "reward", "sft"]);
  });
});

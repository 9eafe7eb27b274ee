// The dashboard in a real browser: Debian's chromium (/usr/bin/chromium; .ci/run installs it)
// driven by playwright-core, nothing downloaded. Every page is loaded under a strict
// Content-Security-Policy (no inline script or style), as the api's helmet sets one, and a
// screenshot of each is written to test-output/dashboard/.
import { mkdir } from "node:fs/promises";
import path from "node:path";
import {
  addEvent,
  addMetrics,
  createRun,
  finishStage,
  recordStageProgress,
  saveCheckpoint,
  startStage,
} from "@chatrl/db";
import type { Browser, Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { launchChromium } from "../../../test/support/chromium.ts";
import { startTestApi, type TestApi } from "./helpers.ts";

const SHOTS = path.resolve(import.meta.dirname, "../../../test-output/dashboard");
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'";
const XSS_NAME = `<img src=x onerror="window.__xss = 1">`;

// What the functions run inside the page use (the test's tsconfig has no DOM types).
type Canvas = {
  width: number;
  height: number;
  getContext(kind: "2d"): { getImageData(...box: number[]): { data: ArrayLike<number> } } | null;
  toDataURL(): string;
};
type PageGlobals = { __xss?: number; __same?: boolean };

let browser: Browser;

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
});

/** A page on `base` with the strict CSP added to every answer; collects console errors. */
async function openPage(base: string): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const problems: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(e.message));
  await page.route(`${base}/**`, async (route) => {
    // A poll still in flight when the api closes is dropped, not an unhandled error.
    const response = await route.fetch().catch(() => null);
    if (!response) return route.abort().catch(() => {});
    await route.fulfill({
      response,
      headers: { ...response.headers(), "content-security-policy": CSP },
    });
  });
  return { page, problems };
}

const wave = (step: number) => 2.5 * Math.exp(-step / 60) + 0.4 + 0.05 * Math.sin(step);

/** A run that went through SFT (200 steps), the reward model and PPO, with its figures. */
async function seedFinishedRun(api: TestApi, name: string) {
  const p = api.database.db.prisma;
  const run = await createRun(p, {
    name,
    spec: { name },
    stages: [
      { kind: "sft", maxSteps: 200 },
      { kind: "reward", maxSteps: 40 },
      { kind: "ppo", maxSteps: 30 },
    ],
  });
  const [sft, reward, ppo] = run.stages;
  for (const stage of run.stages) await startStage(p, stage.id, "cpu");
  for (let step = 1; step <= 200; step++) {
    await addMetrics(p, sft.id, step, {
      loss: wave(step),
      lr: 1e-3 * Math.min(1, step / 10),
      grad_norm: 1 / Math.sqrt(step),
      tokens_per_s: 900 + step,
    });
  }
  for (let step = 1; step <= 40; step++) {
    const values: Record<string, number> = {
      loss: 0.7 / Math.sqrt(step),
      accuracy: 0.5 + step / 90,
    };
    if (step % 10 === 0) values.eval_accuracy = 0.5 + step / 100;
    await addMetrics(p, reward.id, step, values);
  }
  for (let step = 1; step <= 30; step++) {
    await addMetrics(p, ppo.id, step, {
      reward_score: step / 30,
      kl: 0.01 * step,
      actor_loss: -0.1 + 0.001 * step,
      critic_loss: 0.5 / step,
      clip_frac: 0.1,
      answer_len: 12 + (step % 5),
      time_generation_s: 1.5,
      time_scoring_s: 0.4,
      time_training_s: 2.1,
    });
  }
  for (const [i, stage] of run.stages.entries()) {
    await recordStageProgress(p, stage.id, {
      step: stage.maxSteps,
      progress: 1,
      wallSeconds: 120 * (i + 1),
      deviceSeconds: 100 * (i + 1),
      tokens: 50_000 * (i + 1),
      costUsd: 0.02 * (i + 1),
    });
  }
  await saveCheckpoint(p, {
    runId: run.id,
    stageId: ppo.id,
    step: 30,
    role: "actor",
    final: true,
    config: {},
    model: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]),
  });
  await addEvent(p, run.id, "info", `<b>sft</b> started on cpu`);
  await addEvent(p, run.id, "warn", "2 examples were cut to max_seq_len");
  await finishStage(p, sft.id, { status: "succeeded" });
  await finishStage(p, reward.id, { status: "succeeded", summary: { accuracy: 0.9 } });
  await finishStage(p, ppo.id, { status: "succeeded", summary: { reward_score: 0.95, kl: 0.3 } });
  return run;
}

/** Pixels of the page's first chart of that title drawn in its first series' colour. */
async function seriesPixels(page: Page, selector: string): Promise<number> {
  return page.$eval(selector, (canvas) => {
    const c = canvas as unknown as Canvas;
    const data = c.getContext("2d")?.getImageData(0, 0, c.width, c.height).data ?? [];
    let hits = 0;
    // The first series' stroke, #2f6fd0, give or take antialiasing.
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
      if (a > 200 && Math.abs(r - 47) < 40 && Math.abs(g - 111) < 40 && Math.abs(b - 208) < 40) {
        hits++;
      }
    }
    return hits;
  });
}

describe("the dashboard in chromium, without API keys", () => {
  let api: TestApi;
  let base: string;
  let finished: Awaited<ReturnType<typeof seedFinishedRun>>;

  beforeAll(async () => {
    api = await startTestApi();
    base = await api.app.listen({ host: "127.0.0.1", port: 0 });
    finished = await seedFinishedRun(api, XSS_NAME);
  });
  afterAll(async () => api?.close());

  it("lists a finished run with its stages, and shows a name holding HTML as text", async () => {
    const { page, problems } = await openPage(base);
    await page.goto(`${base}/dashboard`);
    const row = page.locator(`tr[data-run="${finished.id}"]`);
    await row.waitFor();
    expect(await row.locator(".badge").first().textContent()).toBe("succeeded");
    expect(await row.locator(".run-name").textContent()).toBe(XSS_NAME);
    expect(await row.locator(".stages .progress").count()).toBe(3);
    expect(await row.locator(".model").textContent()).toBe(`run-${finished.id}`);
    expect(await page.locator("#view img").count()).toBe(0);
    expect(await page.evaluate(() => (globalThis as PageGlobals).__xss)).toBeUndefined();
    await page.locator("#queues .queue").first().waitFor();
    await page.screenshot({ path: path.join(SHOTS, "runs.png"), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  });

  it("draws a run's loss curve with its points, and its time split, events and checkpoints", async () => {
    const { page, problems } = await openPage(base);
    await page.goto(`${base}/dashboard#/runs/${finished.id}`);
    const loss = page.locator('.curves[data-stage="sft"] .chart[data-title="loss"]');
    await loss.locator("canvas").waitFor();
    expect(await loss.getAttribute("data-points")).toBe("200");
    // Not a blank canvas: the loss line is there in its colour.
    expect(
      await seriesPixels(page, '.curves[data-stage="sft"] .chart[data-title="loss"] canvas'),
    ).toBeGreaterThan(300);
    expect(await page.locator('.curves[data-stage="ppo"] .chart').count()).toBeGreaterThanOrEqual(
      6,
    );
    expect(await page.locator('.chart[data-title="accuracy"]').getAttribute("data-points")).toBe(
      "44",
    );

    expect(await page.locator("#run-name").textContent()).toBe(XSS_NAME);
    await page.locator('.timing-table tr[data-stage="ppo"]').waitFor();
    expect(await page.locator(".phases .legend").textContent()).toContain("generation 45.0 s");
    expect(await page.locator("#events .message").first().textContent()).toBe(
      "2 examples were cut to max_seq_len",
    );
    expect(await page.locator("#events b").count()).toBe(0);
    expect(await page.locator("#checkpoints .download").count()).toBe(1);
    expect(await page.locator("#cancel").isHidden()).toBe(true);
    await page.screenshot({ path: path.join(SHOTS, "run.png"), fullPage: true });

    // Zoom: dragging across the loss chart narrows its x axis, and its neighbours follow.
    const over = loss.locator(".u-over");
    const box = (await over.boundingBox())!;
    // uPlot draws axes and lines on its canvas: a zoom shows as a different picture.
    const picture = (title: string) =>
      page.$eval(`.curves[data-stage="sft"] .chart[data-title="${title}"] canvas`, (c) =>
        (c as unknown as Canvas).toDataURL(),
      );
    const before = { loss: await picture("loss"), norm: await picture("gradient norm") };
    await page.mouse.move(box.x + box.width * 0.1, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.3, box.y + box.height / 2, { steps: 5 });
    await page.mouse.up();
    await expect.poll(() => picture("loss")).not.toBe(before.loss);
    await expect.poll(() => picture("gradient norm")).not.toBe(before.norm);
    await page.screenshot({ path: path.join(SHOTS, "run-zoomed.png") });
    expect(problems).toEqual([]);
    await page.close();
  });

  it("downloads a checkpoint from the page", async () => {
    const { page } = await openPage(base);
    await page.goto(`${base}/dashboard#/runs/${finished.id}`);
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.locator("#checkpoints .download").click(),
    ]);
    expect(download.suggestedFilename()).toBe(`${finished.id}-actor-step30.safetensors`);
    await page.close();
  });

  it("updates the list without reloading and cancels a running run from its page", async () => {
    const { page, problems } = await openPage(base);
    await page.goto(`${base}/dashboard#/runs?status=running`);
    await page.locator("#status-filter").waitFor();
    await page.evaluate(() => {
      (globalThis as PageGlobals).__same = true;
    });
    const p = api.database.db.prisma;
    const run = await createRun(p, {
      name: "live one",
      spec: {},
      stages: [{ kind: "sft", maxSteps: 50 }],
    });
    await startStage(p, run.stages[0].id, "cpu");
    await recordStageProgress(p, run.stages[0].id, {
      step: 20,
      progress: 0.4,
      wallSeconds: 30,
      deviceSeconds: 25,
      tokens: 1000,
      costUsd: 0.001,
    });
    const row = page.locator(`tr[data-run="${run.id}"]`);
    await row.waitFor({ timeout: 10_000 });
    expect(await page.evaluate(() => (globalThis as PageGlobals).__same)).toBe(true);
    expect(await page.locator(`tr[data-run="${finished.id}"]`).count()).toBe(0); // filtered out
    expect(await row.locator(".progress span").textContent()).toBe("sft 40%");

    await row.locator(".run-name").click();
    page.once("dialog", (dialog) => dialog.accept());
    await page.locator("#cancel").click();
    await expect.poll(() => page.locator(".run-head .badge").textContent()).toBe("cancelled");
    expect((await api.app.inject({ url: `/v1/runs/${run.id}` })).json().status).toBe("cancelled");
    expect(problems).toEqual([]);
    await page.close();
  });

  it("draws a long run's curves quickly: 5,000 SFT steps and 2,000 PPO steps", async () => {
    const p = api.database.db.prisma;
    const run = await createRun(p, {
      name: "long run",
      spec: {},
      stages: [
        { kind: "sft", maxSteps: 5000 },
        { kind: "ppo", maxSteps: 2000 },
      ],
    });
    const [sft, ppo] = run.stages;
    const rows: { stageId: string; step: number; name: string; value: number }[] = [];
    for (let step = 1; step <= 5000; step++) {
      for (const name of ["loss", "lr", "grad_norm", "tokens_per_s"]) {
        rows.push({ stageId: sft.id, step, name, value: wave(step) });
      }
    }
    const ppoNames = ["reward_score", "kl", "kl_ctl", "actor_loss", "critic_loss", "clip_frac"];
    ppoNames.push("answer_len", "entropy", "value_mean", "return_mean", "actor_lr", "critic_lr");
    ppoNames.push("tokens_per_s", "time_generation_s", "time_scoring_s", "time_training_s");
    for (let step = 1; step <= 2000; step++) {
      for (const name of ppoNames) rows.push({ stageId: ppo.id, step, name, value: wave(step) });
    }
    await p.metric.createMany({ data: rows });

    const { page, problems } = await openPage(base);
    const started = Date.now();
    await page.goto(`${base}/dashboard#/runs/${run.id}`);
    await page.locator('.curves[data-stage="ppo"] .chart[data-title="tokens/s"] canvas').waitFor();
    const seconds = (Date.now() - started) / 1000;
    // 52,000 points over 26 charts, fetched as one JSON list and drawn, on a loaded 2-core box.
    const fetchSeconds = await page.evaluate(async (url) => {
      const t0 = performance.now();
      await (await fetch(url)).json();
      return (performance.now() - t0) / 1000;
    }, `/v1/runs/${run.id}/metrics`);
    console.log(
      `dashboard: ${rows.length} metric points drawn in ${seconds.toFixed(2)} s (GET metrics alone ${fetchSeconds.toFixed(2)} s)`,
    );
    expect(seconds).toBeLessThan(15);
    expect(
      await page.locator('.chart[data-title="loss"]').first().getAttribute("data-points"),
    ).toBe("5000");
    await page.screenshot({ path: path.join(SHOTS, "run-long.png") });
    expect(problems).toEqual([]);
    await page.close();
  });

  it("charts cost per day over a date range", async () => {
    const { page, problems } = await openPage(base);
    await page.goto(`${base}/dashboard#/costs`);
    const chart = page.locator('.chart[data-title="cost per day (USD)"]');
    await chart.locator("canvas").waitFor();
    expect(Number(await chart.getAttribute("data-points"))).toBeGreaterThanOrEqual(1);
    expect(await page.locator("#rows tr").count()).toBeGreaterThanOrEqual(1);
    await page.screenshot({ path: path.join(SHOTS, "costs.png"), fullPage: true });
    await page.locator("#from").fill("2000-01-01");
    await page.locator("#to").fill("2000-01-02");
    await page.locator("#to").dispatchEvent("change");
    await expect.poll(() => page.locator("#rows").textContent()).toContain("nothing has run");
    expect(page.url()).toContain("from=2000-01-01");
    expect(problems).toEqual([]);
    await page.close();
  });
});

describe("the dashboard in chromium, with API keys on", () => {
  let api: TestApi;
  let base: string;

  beforeAll(async () => {
    api = await startTestApi({ CHATRL_API_KEYS: "sk-dashboard" });
    base = await api.app.listen({ host: "127.0.0.1", port: 0 });
    await seedFinishedRun(api, "keyed run");
  });
  afterAll(async () => api?.close());

  it("asks for the key once and then sends it as the bearer token", async () => {
    const { page, problems } = await openPage(base);
    const sent: (string | undefined)[] = [];
    page.on("request", (r) => {
      if (r.url().includes("/v1/runs")) sent.push(r.headers().authorization);
    });
    await page.goto(`${base}/dashboard`);
    await page.locator("#key-form").waitFor({ state: "visible" });
    await page.screenshot({ path: path.join(SHOTS, "key.png") });
    await page.locator("#key").fill("sk-dashboard");
    await page.locator("#key-form button").click();
    await page.locator("tr[data-run] .run-name").first().waitFor();
    expect(await page.locator("tr[data-run] .run-name").first().textContent()).toBe("keyed run");
    expect(sent.at(-1)).toBe("Bearer sk-dashboard");
    // Kept for the next visit: a reload goes straight to the runs.
    await page.reload();
    await page.locator("tr[data-run]").first().waitFor();
    expect(await page.locator("#key-form").isHidden()).toBe(true);
    // The 401 before the key was given is the only console error.
    expect(problems.filter((p) => !p.includes("401"))).toEqual([]);
    await page.close();
  });

  it("shows bull-board's queues to a browser that gives the key as the basic-auth password", async () => {
    const context = await browser.newContext({
      viewport: { width: 1400, height: 900 },
      httpCredentials: { username: "ops", password: "sk-dashboard" },
    });
    const page = await context.newPage();
    await page.goto(`${base}/admin/queues`);
    for (const queue of ["sft", "reward", "ppo"]) {
      await page.getByText(queue, { exact: true }).first().waitFor();
    }
    await page.screenshot({ path: path.join(SHOTS, "queues.png") });
    await context.close();

    const stranger = await browser.newContext({
      httpCredentials: { username: "ops", password: "sk-wrong" },
    });
    const refused = await (await stranger.newPage()).goto(`${base}/admin/queues`);
    expect(refused?.status()).toBe(401);
    await stranger.close();
  });
});

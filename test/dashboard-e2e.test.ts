// The dashboard over a run the real platform trains (api, worker and inference of npm start on
// a test database): the polite example, shortened, through SFT, the reward model and PPO, then
// its page in Debian's chromium shows the worker's own curves, its time split with the queue
// wait and PPO's phases, and the api's /metrics counts it. A screenshot goes to
// test-output/dashboard/real-run.png.
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { createChatrlClient } from "@chatrl/client";
import type { components } from "@chatrl/contracts";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { launchChromium } from "./support/chromium.ts";
import {
  readExample,
  startTestPlatform,
  type TestPlatform,
  waitForRun,
} from "./support/platform.ts";
import { promSample } from "./support/prometheus.ts";

const SHOTS = path.resolve(import.meta.dirname, "../test-output/dashboard");
let platform: TestPlatform;
let browser: Browser;

beforeAll(async () => {
  await mkdir(SHOTS, { recursive: true });
  platform = await startTestPlatform();
  browser = await launchChromium();
});
afterAll(async () => {
  await browser?.close();
  await platform?.stop();
});

describe("the dashboard over a run the platform trained", () => {
  it("shows the worker's curves, the queue wait and PPO's phases, and counts the stages", async () => {
    const api = createChatrlClient({ baseUrl: platform.apiUrl });
    const sftData = await api.uploadDataset("polite-sft", await readExample("polite-sft.jsonl"));
    const pairs = await api.uploadDataset(
      "polite-pairs",
      await readExample("polite-preferences.jsonl"),
    );
    const spec = JSON.parse(await readExample("polite-rlhf.json"));
    spec.name = "dashboard e2e";
    spec.datasets[0].id = sftData.id;
    spec.datasets[1].id = pairs.id;
    Object.assign(spec.stages.sft, { max_steps: 12, checkpoint_every: 6 });
    Object.assign(spec.stages.reward, { max_steps: 8, eval_every: 4 });
    Object.assign(spec.stages.ppo, {
      max_steps: 3,
      per_device_generation_batch_size: 4,
      per_device_training_batch_size: 4,
    });
    const run = await waitForRun(api, (await api.createRun(spec)).id);
    expect(run.status).toBe("succeeded");

    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const problems: string[] = [];
    page.on("pageerror", (e) => problems.push(e.message));
    await page.goto(`${platform.apiUrl}/dashboard`);
    const row = page.locator(`tr[data-run="${run.id}"]`);
    await row.waitFor();
    expect(await row.locator(".badge").first().textContent()).toBe("succeeded");
    expect(await row.locator(".model").textContent()).toBe(`run-${run.id}`);

    await row.locator(".run-name").click();
    const loss = page.locator('.curves[data-stage="sft"] .chart[data-title="loss"]');
    await loss.locator("canvas").waitFor();
    expect(Number(await loss.getAttribute("data-points"))).toBeGreaterThan(0);
    const reward = page.locator('.curves[data-stage="ppo"] .chart[data-title="reward score"]');
    expect(await reward.getAttribute("data-points")).toBe("3");
    expect(
      await page.locator('.curves[data-stage="reward"] .chart[data-title="accuracy"]').count(),
    ).toBe(1);
    await page.locator('.timing-table tr[data-stage="ppo"]').waitFor();
    const legend = await page.locator(".phases .legend").textContent();
    for (const phase of ["generation", "scoring", "training"]) expect(legend).toContain(phase);
    await page.screenshot({ path: path.join(SHOTS, "real-run.png"), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();

    type StageTiming = components["schemas"]["StageTiming"];
    const timing = (await (
      await fetch(`${platform.apiUrl}/v1/runs/${run.id}/timing`)
    ).json()) as components["schemas"]["RunTiming"];
    const ppo = timing.stages.find((s) => s.kind === "ppo") as StageTiming;
    const parentsEnd = Math.max(
      ...timing.stages.filter((s) => s.kind !== "ppo").map((s) => s.finished_at as number),
    );
    expect(ppo.ready_at).toBeCloseTo(parentsEnd, 3);
    expect(ppo.queue_wait_seconds).toBeGreaterThanOrEqual(0);
    expect(ppo.phase_seconds.generation).toBeGreaterThan(0);
    expect(ppo.tokens_per_s).toBeGreaterThan(0);

    const metrics = await (await fetch(`${platform.apiUrl}/metrics`)).text();
    for (const kind of ["sft", "reward", "ppo"]) {
      expect(promSample(metrics, "chatrl_stages", { kind, status: "succeeded" }), kind).toBe(1);
    }
    expect(promSample(metrics, "chatrl_queue_jobs", { queue: "ppo", state: "completed" })).toBe(1);
  });
});

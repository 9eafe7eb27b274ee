import { getStage } from "@chatrl/db";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { promSample } from "../../../test/support/prometheus.ts";
import { buildHealthApp } from "../src/health.ts";
import { startWorker } from "../src/worker.ts";
import { createHarness, FAST_TIMING, type Harness, waitForStage, waitUntil } from "./harness.ts";

const quiet = pino({ level: "silent" });
let h: Harness;

beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  await h?.close();
});

describe("the worker's Prometheus metrics", () => {
  it("counts the stages it trains, their outcome and tokens, on its health port", async () => {
    const worker = await startWorker(
      h.config,
      { db: h.tdb.db, connection: h.connection, logger: quiet },
      FAST_TIMING,
    );
    const app = await buildHealthApp({ db: h.tdb.db, connection: h.connection, worker });
    const scrape = async () => (await app.inject({ url: "/metrics" })).body;
    try {
      const before = await scrape();
      expect(promSample(before, "chatrl_worker_active_stages", { kind: "sft" })).toBe(0);
      expect(before).toMatch(/service="worker"/);

      const { stageId } = await h.submitRun();
      // While it trains: one active sft stage, and the step and tokens/s of its reports.
      const during = await waitUntil(async () => {
        const text = await scrape();
        return (promSample(text, "chatrl_training_step", { kind: "sft" }) ?? 0) > 0
          ? text
          : undefined;
      }, 60_000);
      expect(promSample(during, "chatrl_worker_active_stages", { kind: "sft" })).toBe(1);
      expect(
        promSample(during, "chatrl_training_tokens_per_second", { kind: "sft" }),
      ).toBeGreaterThan(0);
      expect(promSample(during, "chatrl_tfjs_memory_bytes")).toBeGreaterThan(0);

      await waitForStage(h, stageId, "succeeded", 60_000);
      const stage = (await getStage(h.tdb.db.prisma, stageId))!;
      const after = await waitUntil(async () => {
        const text = await scrape();
        const done = promSample(text, "chatrl_worker_stages_finished_total", {
          kind: "sft",
          status: "succeeded",
        });
        const counted = promSample(text, "chatrl_training_tokens_total", { kind: "sft" });
        return done === 1 && counted === Number(stage.tokens) ? text : undefined;
      });
      expect(promSample(after, "chatrl_worker_stages_started_total", { kind: "sft" })).toBe(1);
      expect(promSample(after, "chatrl_worker_active_stages", { kind: "sft" })).toBe(0);
      // The stage's weights are freed with it.
      expect(promSample(after, "chatrl_tfjs_memory_bytes")).toBeLessThan(
        promSample(during, "chatrl_tfjs_memory_bytes") as number,
      );
      expect(promSample(after, "process_resident_memory_bytes")).toBeGreaterThan(0);
      expect(promSample(after, "http_requests_total", { route: "/metrics" })).toBeGreaterThan(0);
    } finally {
      await worker.close();
      await app.close();
    }
  });
});

// The monitoring profile (deploy/monitoring, `docker compose --profile monitoring up`) cannot run
// here (no Docker engine), so it is checked the way Prometheus and Grafana would read it: the
// scrape targets are the compose services on the ports they serve /metrics on, and every metric
// the Grafana dashboard queries is one the three services really expose (read from their
// /metrics, built here against the test database and Redis).
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { loadConfig } from "@chatrl/contracts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { startTestApi, type TestApi } from "../services/api/test/helpers.ts";
import { buildInferenceApp } from "../services/inference/src/app.ts";
import { buildHealthApp } from "../services/worker/src/health.ts";

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, "..");
const monitoring = path.join(root, "deploy/monitoring");

type Panel = {
  type: string;
  title: string;
  datasource?: { uid: string };
  targets?: { expr: string }[];
};

const PROMQL_WORDS = new Set([
  "sum",
  "avg",
  "max",
  "min",
  "count",
  "by",
  "without",
  "rate",
  "increase",
  "irate",
  "histogram_quantile",
  "on",
  "ignoring",
  "and",
  "or",
  "unless",
]);

/** The metric names a PromQL expression reads (label matchers, ranges and `by (...)` removed). */
export function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"[^"]*"/g, "")
    .replace(/\{[^}]*\}/g, "")
    .replace(/\[[^\]]*\]/g, "")
    .replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, "");
  const names = bare.match(/[a-zA-Z_:][a-zA-Z0-9_:]*/g) ?? [];
  return names.filter((n) => !PROMQL_WORDS.has(n));
}

/** Every series name a /metrics page can show: each family, and a histogram's parts. */
function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(name);
    if (type === "histogram")
      for (const part of ["_bucket", "_sum", "_count"]) names.add(name + part);
  }
  return names;
}

describe("the monitoring profile", () => {
  let api: TestApi;
  const pages: Record<string, string> = {};

  beforeAll(async () => {
    api = await startTestApi();
    pages.api = (await api.app.inject({ url: "/metrics" })).body;
    const config = loadConfig({ DATABASE_URL: api.database.url, CHATRL_LOG_LEVEL: "silent" });
    const inference = await buildInferenceApp(config, { db: api.database.db });
    pages.inference = (await inference.inject({ url: "/metrics" })).body;
    await inference.close();
    // The worker's series are registered whatever its queues; no queue is needed to list them.
    const health = await buildHealthApp({
      db: api.database.db,
      connection: api.queues.sft.opts.connection as never,
      worker: { workers: [], backend: undefined as never },
    });
    pages.worker = (await health.inject({ url: "/metrics" })).body;
    await health.close();
  });
  afterAll(async () => api?.close());

  it("is a compose profile docker-compose accepts, with its files in place", async () => {
    const { stdout } = await run("docker-compose", ["--profile", "monitoring", "config"], {
      cwd: root,
    });
    const { services } = parse(stdout);
    for (const name of ["prometheus", "grafana"]) {
      const raw = parse(await readFile(path.join(root, "docker-compose.yml"), "utf8")).services[
        name
      ];
      expect(raw.profiles).toEqual(["monitoring"]);
      for (const volume of services[name].volumes as { type: string; source: string }[]) {
        if (volume.type !== "bind") continue;
        await expect(
          readFile(volume.source).catch((e) => (e.code === "EISDIR" ? "" : Promise.reject(e))),
        ).resolves.toBeDefined();
      }
    }
  });

  it("scrapes the api, every worker and inference replica on the ports they serve /metrics on", async () => {
    const prometheus = parse(await readFile(path.join(monitoring, "prometheus.yml"), "utf8"));
    const compose = parse(await readFile(path.join(root, "docker-compose.yml"), "utf8"));
    const targets = new Map<string, string>();
    for (const job of prometheus.scrape_configs) {
      expect(job.metrics_path).toBe("/metrics");
      for (const s of job.static_configs ?? [])
        for (const t of s.targets) targets.set(job.job_name, t);
      for (const d of job.dns_sd_configs ?? [])
        targets.set(job.job_name, `${d.names[0]}:${d.port}`);
    }
    expect(Object.fromEntries(targets)).toEqual({
      "chatrl-api": "api:8080",
      "chatrl-worker": `worker:${compose.services.worker.environment.CHATRL_WORKER_HEALTH_PORT}`,
      "chatrl-inference": "inference:8000",
    });
    expect(compose.services.api.ports).toContain("8080:8080");
    expect(compose.services.inference.ports).toContain("8000:8000");
  });

  it("gives Grafana a dashboard whose every query reads metrics the services expose", async () => {
    const source = parse(
      await readFile(
        path.join(monitoring, "grafana/provisioning/datasources/prometheus.yml"),
        "utf8",
      ),
    );
    const uid = source.datasources[0].uid;
    const dashboard = JSON.parse(
      await readFile(path.join(monitoring, "grafana/dashboards/chatrl.json"), "utf8"),
    );
    const exposed = new Set([
      ...exposedNames(pages.api),
      ...exposedNames(pages.worker),
      ...exposedNames(pages.inference),
      "up", // Prometheus's own, per target
    ]);
    const panels = (dashboard.panels as Panel[]).filter((p) => p.type !== "row");
    expect(panels.length).toBeGreaterThanOrEqual(15);
    const read = new Set<string>();
    for (const panel of panels) {
      expect(panel.datasource?.uid, panel.title).toBe(uid);
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const { expr } of panel.targets ?? []) {
        const names = metricNames(expr);
        expect(names.length, expr).toBeGreaterThan(0);
        for (const name of names) {
          expect(exposed.has(name), `${panel.title}: ${name} is not exposed`).toBe(true);
          read.add(name);
        }
      }
    }
    // The list: queue depths, stage outcomes, training tokens/s, inference requests,
    // tokens, time to first token, batch occupancy, loaded bytes, HTTP, process memory.
    for (const name of [
      "chatrl_queue_jobs",
      "chatrl_worker_stages_finished_total",
      "chatrl_training_tokens_total",
      "chatrl_inference_requests_total",
      "chatrl_inference_completion_tokens_total",
      "chatrl_inference_time_to_first_token_seconds_bucket",
      "chatrl_inference_batch_occupancy",
      "chatrl_inference_loaded_model_bytes",
      "http_requests_total",
      "http_request_duration_seconds_bucket",
      "process_resident_memory_bytes",
    ]) {
      expect(read.has(name), name).toBe(true);
    }
  });

  it("reads metric names out of PromQL as Prometheus would", () => {
    expect(
      metricNames(
        'histogram_quantile(0.95, sum by (service, route, le) (rate(http_request_duration_seconds_bucket{job=~"a.*"}[5m])))',
      ),
    ).toEqual(["http_request_duration_seconds_bucket"]);
    expect(metricNames("sum(rate(x_sum[5m])) / sum(rate(x_count[5m]))")).toEqual([
      "x_sum",
      "x_count",
    ]);
  });
});

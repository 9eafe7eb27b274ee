// Prometheus metrics for every chatrl service (api, worker health port, inference): `GET /metrics`
// in the text format, HTTP request counts and latency by route and status, and the process's
// own figures (memory, CPU, event loop, GC) from prom-client's default collectors.
//
// Each app gets its own prom-client Registry, never the global one: `npm start` runs the three
// services in one process, and each must answer with its own series (the `service` label tells
// them apart where one Prometheus scrapes all three).
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { collectDefaultMetrics, Counter, Histogram, Registry } from "prom-client";

// The services make their own series with these (prom-client is this workspace's dependency).
export { Counter, Gauge, Histogram, type Registry } from "prom-client";

export type MetricsOptions = {
  /** The `service` label on every series: api, worker or inference. */
  service: string;
};

declare module "fastify" {
  interface FastifyInstance {
    /** The service's registry: add its own metrics with `registers: [app.metrics]`. */
    metrics: Registry;
  }
}

/** Latency buckets in seconds, from a health check (ms) to a long streamed chat (a minute). */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** The route label of requests no route matched: one series, whatever paths were probed. */
export const UNMATCHED_ROUTE = "unmatched";

export const metricsPlugin = fp(
  async (app: FastifyInstance, opts: MetricsOptions) => {
    const registry = new Registry();
    registry.setDefaultLabels({ service: opts.service });
    collectDefaultMetrics({ register: registry });

    const labelNames = ["method", "route", "status_code"] as const;
    const requests = new Counter({
      name: "http_requests_total",
      help: "HTTP requests answered, by method, route template and status code.",
      labelNames,
      registers: [registry],
    });
    const latency = new Histogram({
      name: "http_request_duration_seconds",
      help: "Time from receiving a request to the end of its response (a whole stream for SSE).",
      labelNames,
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    });

    app.addHook("onResponse", async (request, reply) => {
      // The route's template (`/v1/runs/:id`), never the raw URL: one series per route.
      const labels = {
        method: request.method,
        route: request.routeOptions.url ?? UNMATCHED_ROUTE,
        status_code: String(reply.statusCode),
      };
      requests.inc(labels);
      latency.observe(labels, reply.elapsedTime / 1000);
    });

    app.decorate("metrics", registry);
    // Scrapers send no API key, as for health checks; no user text is in any label.
    app.route({
      method: "GET",
      url: "/metrics",
      config: { public: true, operationId: "getMetrics" },
      handler: async (_request, reply) =>
        reply.type(registry.contentType).send(await registry.metrics()),
    });
  },
  { name: "chatrl-metrics", fastify: "5.x" },
);

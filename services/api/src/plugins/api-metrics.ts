// The api's own Prometheus series, read when Prometheus scrapes: BullMQ queue depths per stage
// queue (from Redis), and stages and runs by status (from Postgres, so they count the work of
// every worker, wherever it runs). Register after metricsPlugin, dbPlugin and queuePlugin.
import type { StageKind } from "@chatrl/contracts";
import { Gauge } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { QUEUE_STATES, type QueueCounts, queueCounts } from "../queue-counts.ts";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"] as const;
const KINDS: StageKind[] = ["sft", "reward", "ppo"];

export const apiMetricsPlugin = fp(
  async (app: FastifyInstance) => {
    const registers = [app.metrics];
    const prisma = app.db.prisma;

    // One read of the queue counts per scrape, shared by the two gauges that show it:
    // prom-client starts every collect of a scrape at once, so both find the read in flight.
    let inFlight: Promise<QueueCounts[] | null> | undefined;
    const counts = () => {
      // Shorter than a scrape's usual 10 s timeout, so the rest of the page still arrives.
      const timeoutMs = Math.min(app.queue.timeoutMs, 3000);
      inFlight ??= queueCounts(app.queue.queues, timeoutMs)
        .catch(() => null)
        .finally(() => {
          inFlight = undefined;
        });
      return inFlight;
    };
    new Gauge({
      name: "chatrl_queue_up",
      help: "1 when Redis answered the queue counts of this scrape, else 0.",
      registers,
      async collect() {
        this.set((await counts()) ? 1 : 0);
      },
    });
    new Gauge({
      name: "chatrl_queue_jobs",
      help: "Jobs in each stage queue by BullMQ state (waiting includes prioritized).",
      labelNames: ["queue", "state"],
      registers,
      async collect() {
        const rows = await counts();
        // Without an answer the series are left out rather than shown as zero.
        this.reset();
        for (const row of rows ?? []) {
          for (const state of QUEUE_STATES) this.set({ queue: row.queue, state }, row[state]);
        }
      },
    });

    // A database outage must not take the whole page down: the Postgres gauges keep their last
    // values and chatrl_database_up says so.
    new Gauge({
      name: "chatrl_database_up",
      help: "1 when Postgres answered this scrape, else 0.",
      registers,
      async collect() {
        this.set(
          await prisma.$queryRaw`SELECT 1`.then(
            () => 1,
            () => 0,
          ),
        );
      },
    });
    const fromDatabase = (read: () => Promise<void>) => read().catch(() => {});

    new Gauge({
      name: "chatrl_stages",
      help: "Stages by kind and status (all runs, from Postgres).",
      labelNames: ["kind", "status"],
      registers,
      async collect() {
        await fromDatabase(async () => {
          const rows = await prisma.stage.groupBy({
            by: ["kind", "status"],
            _count: { _all: true },
          });
          // Every pair is set, so a status that empties reads 0 rather than vanishing.
          for (const kind of KINDS) for (const status of STATUSES) this.set({ kind, status }, 0);
          for (const row of rows) this.set({ kind: row.kind, status: row.status }, row._count._all);
        });
      },
    });

    new Gauge({
      name: "chatrl_stages_started",
      help: "Stages that have ever started, by kind (all runs, from Postgres).",
      labelNames: ["kind"],
      registers,
      async collect() {
        await fromDatabase(async () => {
          const rows = await prisma.stage.groupBy({
            by: ["kind"],
            where: { startedAt: { not: null } },
            _count: { _all: true },
          });
          for (const kind of KINDS) this.set({ kind }, 0);
          for (const row of rows) this.set({ kind: row.kind }, row._count._all);
        });
      },
    });

    new Gauge({
      name: "chatrl_runs",
      help: "Runs by status (from Postgres).",
      labelNames: ["status"],
      registers,
      async collect() {
        await fromDatabase(async () => {
          const rows = await prisma.run.groupBy({ by: ["status"], _count: { _all: true } });
          for (const status of STATUSES) this.set({ status }, 0);
          for (const row of rows) this.set({ status: row.status }, row._count._all);
        });
      },
    });
  },
  {
    name: "chatrl-api-metrics",
    fastify: "5.x",
    dependencies: ["chatrl-metrics", "chatrl-db", "chatrl-queue"],
  },
);

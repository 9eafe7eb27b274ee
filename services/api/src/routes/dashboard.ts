// The JSON queries behind the dashboard page: costs and time grouped by run, stage kind or day
// (within a day range), one run's per-stage timing, and the stage queues' job counts.
import { ApiError, type components, openApiRoute } from "@chatrl/contracts";
import {
  type CostGroup,
  costSummary,
  type DayRange,
  getRun,
  type StageTiming,
  stageTimings,
  type TimeRow,
  timeSummary,
} from "@chatrl/db";
import type { FastifyInstance } from "fastify";
import { queueCounts } from "../queue-counts.ts";

type StageTimingJson = components["schemas"]["StageTiming"];
type TimeRowJson = components["schemas"]["TimeRow"];

/** Unix seconds with milliseconds, for durations measured in the browser. */
const seconds = (date: Date | null) => (date === null ? null : date.getTime() / 1000);

/** `from` / `to` as the schema let them through (YYYY-MM-DD): real days, in order. */
function dayRange(query: { from?: string; to?: string }): DayRange {
  for (const param of ["from", "to"] as const) {
    const day = query[param];
    if (day === undefined) continue;
    const parsed = new Date(`${day}T00:00:00Z`);
    if (Number.isNaN(parsed.getTime()) || parsed.toISOString().slice(0, 10) !== day) {
      throw new ApiError(400, `${param} is not a calendar day: ${day}`, {
        param,
        code: "invalid_day",
      });
    }
  }
  if (query.from && query.to && query.from > query.to) {
    throw new ApiError(400, `from (${query.from}) is after to (${query.to})`, {
      param: "from",
      code: "invalid_range",
    });
  }
  return { from: query.from, to: query.to };
}

function toStageTimingJson(s: StageTiming): StageTimingJson {
  return {
    stage_id: s.stageId,
    kind: s.kind,
    status: s.status,
    step: s.step,
    ready_at: seconds(s.readyAt),
    started_at: seconds(s.startedAt),
    finished_at: seconds(s.finishedAt),
    queue_wait_seconds: s.queueWaitSeconds,
    wall_seconds: s.wallSeconds,
    device_seconds: s.deviceSeconds,
    tokens: s.tokens,
    tokens_per_s: s.tokensPerSecond,
    cost_usd: s.costUsd,
    phase_seconds: s.phaseSeconds,
  };
}

function toTimeRowJson(r: TimeRow): TimeRowJson {
  return {
    key: r.key,
    runs: r.runs,
    stages: r.stages,
    queue_wait_seconds: r.queueWaitSeconds,
    wall_seconds: r.wallSeconds,
    device_seconds: r.deviceSeconds,
    tokens: r.tokens,
    tokens_per_s: r.tokensPerSecond,
    cost_usd: r.costUsd,
    phase_seconds: r.phaseSeconds,
  };
}

export default async function dashboardRoutes(app: FastifyInstance) {
  const prisma = app.db.prisma;

  app.route({
    ...openApiRoute("GET", "/v1/dashboard/costs"),
    handler: async (request) => {
      const query = request.query as { group_by: CostGroup; from?: string; to?: string };
      const rows = await costSummary(prisma, query.group_by, dayRange(query));
      const data = rows.map((row) => ({
        key: row.key,
        runs: row.runs,
        stages: row.stages,
        wall_seconds: row.wallSeconds,
        device_seconds: row.deviceSeconds,
        tokens: row.tokens,
        cost_usd: row.costUsd,
      }));
      const sum = (pick: (row: (typeof data)[number]) => number) =>
        data.reduce((total, row) => total + pick(row), 0);
      return {
        object: "list" as const,
        group_by: query.group_by,
        data,
        total: {
          wall_seconds: sum((r) => r.wall_seconds),
          device_seconds: sum((r) => r.device_seconds),
          tokens: sum((r) => r.tokens),
          cost_usd: sum((r) => r.cost_usd),
        },
      };
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/dashboard/time"),
    handler: async (request) => {
      const query = request.query as {
        group_by: CostGroup;
        from?: string;
        to?: string;
        run_id?: string;
      };
      const rows = await timeSummary(prisma, query.group_by, {
        ...dayRange(query),
        runId: query.run_id,
      });
      return { object: "list" as const, group_by: query.group_by, data: rows.map(toTimeRowJson) };
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/runs/{id}/timing"),
    handler: async (request) => {
      const { id } = request.params as { id: string };
      // One query for the stages; the run lookup only tells an unknown id from a stageless run.
      const stages = await stageTimings(prisma, id);
      if (stages.length === 0 && !(await getRun(prisma, id))) {
        throw new ApiError(404, `No run with id '${id}'`, { param: "id", code: "not_found" });
      }
      return { object: "run.timing" as const, run_id: id, stages: stages.map(toStageTimingJson) };
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/dashboard/queues"),
    handler: async () => {
      try {
        const data = await queueCounts(app.queue.queues, app.queue.timeoutMs);
        return { object: "list" as const, data };
      } catch (error) {
        throw new ApiError(503, `Queue counts unavailable: ${(error as Error).message}`, {
          code: "queue_unavailable",
        });
      }
    },
  });
}

import { openApiRoute } from "@chatrl/contracts";
import { type CostGroup, costSummary } from "@chatrl/db";
import type { FastifyInstance } from "fastify";

export default async function dashboardRoutes(app: FastifyInstance) {
  app.route({
    ...openApiRoute("GET", "/v1/dashboard/costs"),
    handler: async (request) => {
      const { group_by: groupBy } = request.query as { group_by: CostGroup };
      const rows = await costSummary(app.db.prisma, groupBy);
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
        group_by: groupBy,
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
}

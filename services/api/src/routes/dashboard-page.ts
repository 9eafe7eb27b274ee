// GET /dashboard: one static page that charts GET /v1/dashboard/costs in the browser.
import { readFile } from "node:fs/promises";
import { openApiRoute } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";

export default async function dashboardPageRoutes(app: FastifyInstance) {
  const page = await readFile(new URL("../static/dashboard.html", import.meta.url), "utf8");
  app.route({
    ...openApiRoute("GET", "/dashboard"),
    handler: async (_request, reply) => reply.type("text/html; charset=utf-8").send(page),
  });
}

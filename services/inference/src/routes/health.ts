import { checkReadiness, openApiRoute } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";

export default async function healthRoutes(app: FastifyInstance) {
  app.route({ ...openApiRoute("GET", "/healthz"), handler: async () => ({ status: "ok" }) });

  // Ready when Postgres answers: every model is loaded from it. (No Redis here.)
  app.route({
    ...openApiRoute("GET", "/readyz"),
    handler: () => checkReadiness({ postgres: () => app.db.prisma.$queryRaw`SELECT 1` }),
  });
}

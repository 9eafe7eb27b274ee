import { openApiRoute } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";

export default async function healthRoutes(app: FastifyInstance) {
  app.route({ ...openApiRoute("GET", "/healthz"), handler: async () => ({ status: "ok" }) });

  // Ready when Postgres answers: every model is loaded from it. (No Redis here.)
  app.route({
    ...openApiRoute("GET", "/readyz"),
    handler: async (request, reply) => {
      try {
        await app.db.prisma.$queryRaw`SELECT 1`;
        return { status: "ready", postgres: "ok" };
      } catch (error) {
        request.log.warn({ err: error }, "readiness check: Postgres unreachable");
        return reply.code(503).send({
          error: {
            message: "Postgres is not reachable",
            type: "service_unavailable",
            param: null,
            code: "postgres_unreachable",
          },
        });
      }
    },
  });
}

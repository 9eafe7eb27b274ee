// The database handle, shared by every route. The caller that opened it closes it.
import type { Database } from "@chatrl/db";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

declare module "fastify" {
  interface FastifyInstance {
    db: Database;
  }
}

export default fp(
  async (app: FastifyInstance, opts: { db: Database }) => {
    app.decorate("db", opts.db);
  },
  { name: "db" },
);

import type { Database } from "@chatrl/db";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

declare module "fastify" {
  interface FastifyInstance {
    db: Database;
  }
}

/** Shares the caller's Database with every route; the caller opens and closes it. */
export const dbPlugin = fp(
  async (app: FastifyInstance, opts: { db: Database }) => {
    app.decorate("db", opts.db);
  },
  { name: "chatrl-db", fastify: "5.x" },
);

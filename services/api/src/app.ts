import {
  authPlugin,
  type ChatrlConfig,
  errorsPlugin,
  frameworkErrors,
  metricsPlugin,
  openApiPlugin,
  rateLimitPlugin,
  securityHeadersPlugin,
  serverTimeouts,
  slowBodyPlugin,
  type StageKind,
} from "@chatrl/contracts";
import { type Database, storedApiKeys } from "@chatrl/db";
import type { FlowThread } from "@chatrl/queue";
import type { FlowProducer, Queue } from "bullmq";
import Fastify, { type FastifyInstance } from "fastify";
import { apiMetricsPlugin } from "./plugins/api-metrics.ts";
import { dbPlugin } from "./plugins/db.ts";
import { queuePlugin } from "./plugins/queue.ts";
import { queueBoardPlugin } from "./plugins/queue-board.ts";
import { storableTextPlugin } from "./plugins/storable-text.ts";
import { newRequestId } from "./request-id.ts";
import checkpointRoutes from "./routes/checkpoints.ts";
import dashboardRoutes from "./routes/dashboard.ts";
import dashboardPageRoutes from "./routes/dashboard-page.ts";
import datasetRoutes from "./routes/datasets.ts";
import healthRoutes from "./routes/health.ts";
import runRoutes from "./routes/runs.ts";

export type ApiDeps = {
  db: Database;
  flow: FlowProducer;
  /** Adds submitted runs' flows on a thread of its own (server.ts starts one); absent: `flow` does. */
  flowThread?: FlowThread;
  /** The stage queues under the same prefix as `flow`, for removing jobs of cancelled runs. */
  queues: Record<StageKind, Queue>;
  /** How long a request waits for Redis before answering 503 (default 5000 ms). */
  queueTimeoutMs?: number;
  /** Pauses before each retry of a run's flow that Redis did not take (default 0.25, 1, 4 s). */
  dispatchRetryDelaysMs?: number[];
};

/** JSON bodies (run specs) are small; only dataset uploads get config.maxUploadBytes. */
const JSON_BODY_LIMIT = 1024 * 1024;

/**
 * The api service, assembled from plugins and one route file per resource. The caller owns
 * the deps (opens them before, closes them after `app.close()`).
 */
export async function buildApp(config: ChatrlConfig, deps: ApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    logger: { level: config.logLevel, redact: ["req.headers.authorization"] },
    bodyLimit: JSON_BODY_LIMIT,
    // OpenAI clients log x-request-id; a caller's own id is kept so logs can be joined.
    requestIdHeader: "x-request-id",
    genReqId: newRequestId,
    // Malformed percent-encoding in a path is answered in the error shape, not Fastify's own.
    frameworkErrors,
    // Slow or idle clients are closed (slowloris); uploads at a sane rate still fit.
    ...serverTimeouts(config.timeouts),
  });
  app.addHook("onRequest", async (request, reply) => {
    reply.header("x-request-id", request.id);
  });
  // Bodies are JSON or, for dataset uploads, JSONL; anything else is a 415, not a string body.
  app.removeContentTypeParser("text/plain");
  // `curl -X POST -H 'Content-Type: application/json' .../cancel` sends no body: that is no
  // body, not a 400 (routes that need one still say so through their schema).
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "string" }, (request, body, done) =>
    body === "" ? done(null, undefined) : parseJson(request, body as string, done),
  );
  await app.register(errorsPlugin);
  await app.register(securityHeadersPlugin);
  await app.register(slowBodyPlugin, {
    minBytesPerSecond: config.timeouts.minBodyBytesPerSecond,
    graceMs: config.timeouts.bodyGraceMs,
  });
  await app.register(metricsPlugin, { service: "api" });
  await app.register(openApiPlugin);
  await app.register(dbPlugin, { db: deps.db });
  await app.register(queuePlugin, {
    flow: deps.flow,
    flowThread: deps.flowThread,
    queues: deps.queues,
    timeoutMs: deps.queueTimeoutMs ?? 5000,
    dispatchRetryDelaysMs: deps.dispatchRetryDelaysMs,
  });
  await app.register(authPlugin, {
    apiKeys: config.apiKeys,
    storedKeys: storedApiKeys(deps.db.prisma),
  });
  await app.register(rateLimitPlugin, {
    max: config.rateLimitMax,
    windowMs: config.rateLimitWindowMs,
    redisUrl: config.redisUrl,
    prefix: config.queuePrefix,
  });
  await app.register(storableTextPlugin);
  await app.register(apiMetricsPlugin);

  await app.register(healthRoutes, { redisUrl: config.redisUrl });
  await app.register(datasetRoutes, { maxUploadBytes: config.maxUploadBytes });
  await app.register(runRoutes);
  await app.register(checkpointRoutes);
  await app.register(dashboardRoutes);
  await app.register(dashboardPageRoutes);
  await app.register(queueBoardPlugin);
  await app.ready();
  return app;
}

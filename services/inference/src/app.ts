// The inference service: OpenAI-compatible /v1/models, /v1/chat/completions and /v1/completions
// over the checkpoints in Postgres, plus health checks.
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
} from "@chatrl/contracts";
import { type Database, storedApiKeys } from "@chatrl/db";
import Fastify, { type FastifyInstance } from "fastify";
import { registerInferenceMetrics } from "./metrics.ts";
import type { RegistryOptions } from "./model-registry.ts";
import dbPlugin from "./plugins/db.ts";
import modelsPlugin from "./plugins/models.ts";
import chatCompletionRoutes from "./routes/chat-completions.ts";
import completionRoutes from "./routes/completions.ts";
import healthRoutes from "./routes/health.ts";
import modelRoutes from "./routes/models.ts";

export type InferenceDeps = {
  db: Database;
  /** Model cache (bytes), decode-loop admission and refresh limits; defaults suit one small CPU machine. */
  registry?: RegistryOptions;
};

export async function buildInferenceApp(
  config: ChatrlConfig,
  deps: InferenceDeps,
): Promise<FastifyInstance> {
  const app = Fastify({
    logger: { level: config.logLevel },
    frameworkErrors,
    ...serverTimeouts(config.timeouts),
  });
  await app.register(errorsPlugin);
  await app.register(metricsPlugin, { service: "inference" });
  await app.register(securityHeadersPlugin);
  await app.register(slowBodyPlugin, {
    minBytesPerSecond: config.timeouts.minBodyBytesPerSecond,
    graceMs: config.timeouts.bodyGraceMs,
  });
  await app.register(openApiPlugin);
  await app.register(authPlugin, {
    apiKeys: config.apiKeys,
    storedKeys: storedApiKeys(deps.db.prisma),
  });
  // Per key, shared by the replicas through Redis (requests pass when Redis is away).
  await app.register(rateLimitPlugin, {
    max: config.rateLimitMax,
    windowMs: config.rateLimitWindowMs,
    redisUrl: config.redisUrl,
    prefix: config.queuePrefix,
  });
  await app.register(dbPlugin, { db: deps.db });
  await app.register(modelsPlugin, { ...deps.registry, backend: config.backend });
  const stopMetrics = registerInferenceMetrics(app.metrics, app.modelRegistry);
  app.addHook("onClose", async () => stopMetrics());
  await app.register(healthRoutes);
  await app.register(modelRoutes);
  await app.register(chatCompletionRoutes);
  await app.register(completionRoutes);
  return app;
}

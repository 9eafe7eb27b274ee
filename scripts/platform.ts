// The whole platform in one process: migrations, api, one worker and inference sharing one
// database handle. This is what `npm start` runs, and what the end-to-end test starts. Embedded
// PGlite (no DATABASE_URL) can only be opened by one process, which is why the three services
// share a process here; with a Postgres URL they can equally run as separate processes
// (services/*/src/main.ts), as docker-compose.yml does.
import type { ChatrlConfig } from "@chatrl/contracts";
import { ensureDatabaseExists, migrate, openDatabase } from "@chatrl/db";
import {
  checkRedis,
  closeStageQueues,
  createFlowProducer,
  createStageQueues,
  FlowThread,
  redisConnection,
} from "@chatrl/queue";
import { buildApp } from "@chatrl/api";
import { startWorker } from "@chatrl/worker";
import { buildInferenceApp } from "@chatrl/inference";

export interface Platform {
  apiUrl: string;
  inferenceUrl: string;
  close(): Promise<void>;
}

export interface PlatformOptions {
  log?: (line: string) => void;
}

export async function startPlatform(
  config: ChatrlConfig,
  opts: PlatformOptions = {},
): Promise<Platform> {
  const log = opts.log ?? (() => {});
  await checkRedis(config.redisUrl).catch((err: Error) => {
    throw new Error(
      `${err.message.replace(/\.$/, "")}. Start a Redis server (redis-server) or set REDIS_URL.`,
    );
  });
  if (config.databaseUrl && (await ensureDatabaseExists(config.databaseUrl))) {
    log("database: created");
  }
  const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
  const closers: (() => Promise<unknown>)[] = [() => db.close()];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch(() => {});
  };
  try {
    log(`database: ${db.kind === "pglite" ? `embedded PGlite in ${config.dataDir}` : "Postgres"}`);
    const { applied } = await migrate(db);
    log(applied.length ? `migrations applied: ${applied.join(", ")}` : "migrations: up to date");

    const apiConnection = redisConnection(config.redisUrl);
    closers.push(async () => apiConnection.disconnect());
    const flow = createFlowProducer(apiConnection, config.queuePrefix);
    closers.push(() => flow.close());
    const queues = createStageQueues(apiConnection, config.queuePrefix);
    closers.push(() => closeStageQueues(queues));
    // As the api service does (server.ts): submitted runs' flows are added off the event loop,
    // which here also trains.
    const flowThread = new FlowThread(config.redisUrl, config.queuePrefix);
    closers.push(() => flowThread.close());

    const workerConnection = redisConnection(config.redisUrl);
    closers.push(async () => workerConnection.disconnect());
    const worker = await startWorker(config, { db, connection: workerConnection });
    closers.push(() => worker.close());

    const api = await buildApp(config, { db, flow, flowThread, queues });
    closers.push(() => api.close());
    const apiUrl = await api.listen({ port: config.apiPort, host: config.host });

    const inference = await buildInferenceApp(config, { db });
    closers.push(() => inference.close());
    const inferenceUrl = await inference.listen({ port: config.inferencePort, host: config.host });

    log(`api ${apiUrl}, inference ${inferenceUrl}, worker on queues ${config.queues.join(",")}`);
    return { apiUrl: localUrl(apiUrl), inferenceUrl: localUrl(inferenceUrl), close };
  } catch (err) {
    await close();
    throw err;
  }
}

// Fastify reports the bound address; clients on this machine reach 0.0.0.0 through loopback.
function localUrl(url: string): string {
  return url.replace("0.0.0.0", "127.0.0.1").replace("[::]", "127.0.0.1");
}

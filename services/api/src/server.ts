import type { ChatrlConfig } from "@chatrl/contracts";
import { openDatabase } from "@chatrl/db";
import {
  closeStageQueues,
  createFlowProducer,
  createStageQueues,
  FlowThread,
  redisConnection,
} from "@chatrl/queue";
import type { FastifyInstance } from "fastify";
import { buildApp } from "./app.ts";

/**
 * Opens Postgres and Redis, builds the app and listens on config.host:config.apiPort.
 * `close()` stops accepting requests, waits for those in flight, then closes the connections.
 */
export async function startApiServer(
  config: ChatrlConfig,
): Promise<{ app: FastifyInstance; close(): Promise<void> }> {
  const db = await openDatabase(config);
  // No offline queue: a command issued while Redis is lost fails at once (503) instead of
  // waiting to be sent when Redis is back, which would queue a run already answered as failed.
  const connection = redisConnection(config.redisUrl, { enableOfflineQueue: false });
  connection.on("error", () => {}); // reported by the queue plugin and by /readyz
  const flow = createFlowProducer(connection, config.queuePrefix);
  const queues = createStageQueues(connection, config.queuePrefix);
  const flowThread = new FlowThread(config.redisUrl, config.queuePrefix);
  const closeDeps = async () => {
    await flowThread.close();
    await flow.close();
    await closeStageQueues(queues);
    connection.disconnect();
    await db.close();
  };
  let app: FastifyInstance;
  try {
    app = await buildApp(config, { db, flow, flowThread, queues });
    await app.listen({ host: config.host, port: config.apiPort });
  } catch (error) {
    await closeDeps();
    throw error;
  }
  return {
    app,
    async close() {
      await app.close();
      await closeDeps();
    },
  };
}

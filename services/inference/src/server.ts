import type { ChatrlConfig } from "@chatrl/contracts";
import { openDatabase } from "@chatrl/db";
import type { FastifyInstance } from "fastify";
import { buildInferenceApp } from "./app.ts";
import type { RegistryOptions } from "./model-registry.ts";

/**
 * Opens Postgres, builds the app and listens on config.host:config.inferencePort.
 * `close()` stops accepting requests, waits for those in flight, then closes the database.
 */
export async function startInferenceServer(
  config: ChatrlConfig,
  options: { registry?: RegistryOptions } = {},
): Promise<{ app: FastifyInstance; url: string; close(): Promise<void> }> {
  const db = await openDatabase(config);
  let app: FastifyInstance;
  let url: string;
  try {
    app = await buildInferenceApp(config, { db, registry: options.registry });
    url = await app.listen({ host: config.host, port: config.inferencePort });
  } catch (error) {
    await db.close();
    throw error;
  }
  return {
    app,
    url,
    async close() {
      await app.close();
      await db.close();
    },
  };
}

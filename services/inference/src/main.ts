// Starts the inference service from the environment: `tsx services/inference/src/main.ts`.
import { loadConfig } from "@chatrl/contracts";
import { openDatabase } from "@chatrl/db";
import closeWithGrace from "close-with-grace";
import { buildInferenceApp } from "./app.ts";

const config = loadConfig(process.env);
const db = await openDatabase(config);
const app = await buildInferenceApp(config, { db });

closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, "shutting down after an error");
  else app.log.info({ signal }, "shutting down");
  await app.close();
  await db.close();
});

await app.listen({ port: config.inferencePort, host: config.host });

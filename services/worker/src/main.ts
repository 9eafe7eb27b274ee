// Entry point: a worker process serving the stage queues named by CHATRL_QUEUES.
import { loadConfig } from "@chatrl/contracts";
import { openDatabase } from "@chatrl/db";
import { checkRedis, redisConnection } from "@chatrl/queue";
import closeWithGrace from "close-with-grace";
import { pino } from "pino";
import { buildHealthApp } from "./health.ts";
import { loadWorkerOptions } from "./options.ts";
import { startWorker } from "./worker.ts";

const config = loadConfig(process.env);
const options = loadWorkerOptions(process.env);
const logger = pino({ name: "worker", level: config.logLevel });

await checkRedis(config.redisUrl);
const db = await openDatabase(config);
const connection = redisConnection(config.redisUrl);
const worker = await startWorker(config, { db, connection, logger }, options);
const health =
  config.workerHealthPort === undefined
    ? undefined
    : await buildHealthApp({ db, connection, worker });
await health?.listen({ port: config.workerHealthPort, host: config.host });

// SIGINT/SIGTERM: the stage in progress checkpoints and goes back to the queue. A second signal,
// or a close slower than one lock period, exits at once; the job is then re-run after its lock
// expires, from its last checkpoint.
closeWithGrace({ delay: options.lockDurationMs }, async ({ signal, err }) => {
  if (err) logger.error({ err }, "worker stopping after an error");
  else logger.info({ signal }, "worker stopping");
  await health?.close();
  await worker.close();
  await connection.quit();
  await db.close();
});

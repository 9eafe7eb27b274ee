// Entry point: a worker process serving the stage queues named by CHATRL_QUEUES.
import { ConfigError, loadConfig } from "@chatrl/contracts";
import { openDatabase } from "@chatrl/db";
import { checkRedis, QueueUnavailableError, redisConnection } from "@chatrl/queue";
import closeWithGrace from "close-with-grace";
import { pino } from "pino";
import { NativeKernelsMissingError } from "./backend-report.ts";
import { buildHealthApp } from "./health.ts";
import { loadWorkerOptions } from "./options.ts";
import { loadResilienceOptions } from "./resilience-options.ts";
import { startWorker } from "./worker.ts";

/** Bad configuration or an unreachable Redis: one line for the operator, no stack trace. */
async function orExit<T>(step: () => T | Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (error) {
    const expected =
      error instanceof ConfigError ||
      error instanceof QueueUnavailableError ||
      error instanceof NativeKernelsMissingError;
    if (!expected) throw error;
    console.error(error.message);
    process.exit(1);
  }
}

const { config, options } = await orExit(() => ({
  config: loadConfig(process.env),
  options: { ...loadWorkerOptions(process.env), ...loadResilienceOptions(process.env) },
}));
const logger = pino({ name: "worker", level: config.logLevel });

await orExit(() => checkRedis(config.redisUrl));
const db = await openDatabase(config);
const connection = redisConnection(config.redisUrl);
const worker = await orExit(() =>
  startWorker(config, { db, connection, logger }, options).catch(async (error) => {
    await connection.quit();
    await db.close();
    throw error;
  }),
);
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

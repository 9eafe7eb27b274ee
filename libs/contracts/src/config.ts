import { z } from "zod";

export type StageKind = "sft" | "reward" | "ppo";
export const STAGE_KINDS: readonly StageKind[] = ["sft", "reward", "ppo"];

export type BackendName = "tensorflow-gpu" | "tensorflow" | "wasm" | "cpu";

export type ChatrlConfig = {
  /** Postgres URL; unset means embedded PGlite under `${dataDir}/pglite`. */
  databaseUrl?: string;
  dataDir: string;
  redisUrl: string;
  /** BullMQ key prefix; tests use their own so they never see each other's jobs. */
  queuePrefix: string;
  apiPort: number;
  inferencePort: number;
  /** Port of the worker's /healthz and /readyz; unset means the worker serves no HTTP. */
  workerHealthPort?: number;
  host: string;
  backend?: BackendName;
  /** Bearer keys the services accept; empty means no authentication. */
  apiKeys: string[];
  /** The stage queues this process's worker serves. */
  queues: StageKind[];
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** Largest request body the api accepts (dataset uploads), in bytes. */
  maxUploadBytes: number;
  /** Requests per rateLimitWindowMs per API key (per address on an open service); 0: no limit. */
  rateLimitMax: number;
  rateLimitWindowMs: number;
  /** Connection bounds of the api and inference servers (slow or idle clients). */
  timeouts: ServerTimeouts;
};

export type ServerTimeouts = {
  /** The request line and headers must arrive within this. */
  headersMs: number;
  /** A whole request, body included, must arrive within this (large uploads included). */
  requestMs: number;
  /** A socket with no traffic either way for this long is closed. */
  idleMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveMs: number;
  /** After the first graceMs, a body must keep arriving at this average rate or get a 408. */
  minBodyBytesPerSecond: number;
  bodyGraceMs: number;
};

const commaList = (value: string | undefined) =>
  (value ?? "")
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item.length > 0);

const port = (fallback: number) => z.coerce.number().int().min(1).max(65535).default(fallback);

// Keys are environment variable names so an error can name the variable the user must fix.
const envSchema = z.object({
  DATABASE_URL: z
    .string()
    .regex(/^postgres(ql)?:\/\//, "must be a postgres:// or postgresql:// URL")
    .optional(),
  CHATRL_DATA_DIR: z.string().min(1).default("./data"),
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\//, "must be a redis:// or rediss:// URL")
    .default("redis://127.0.0.1:6379"),
  CHATRL_QUEUE_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_-]+$/, "may only contain letters, digits, _ and -")
    .default("chatrl"),
  CHATRL_API_PORT: port(8080),
  CHATRL_INFERENCE_PORT: port(8000),
  CHATRL_WORKER_HEALTH_PORT: z.coerce.number().int().min(1).max(65535).optional(),
  CHATRL_HOST: z.string().min(1).default("0.0.0.0"),
  CHATRL_BACKEND: z.enum(["tensorflow-gpu", "tensorflow", "wasm", "cpu"]).optional(),
  CHATRL_API_KEYS: z.string().optional(),
  CHATRL_QUEUES: z
    .string()
    .default("sft,reward,ppo")
    .transform(commaList)
    .pipe(z.array(z.enum(["sft", "reward", "ppo"])).min(1, "must name at least one queue")),
  CHATRL_LOG_LEVEL: z
    .enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"])
    .default("info"),
  CHATRL_MAX_UPLOAD_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .default(50 * 1024 * 1024),
  // One user (the CLI following a run, the dashboard polling) stays far below this.
  CHATRL_RATE_LIMIT_MAX: z.coerce.number().int().min(0).default(6000),
  CHATRL_RATE_LIMIT_WINDOW_MS: z.coerce.number().int().min(1000).default(60_000),
  CHATRL_HEADERS_TIMEOUT_MS: z.coerce.number().int().min(100).default(10_000),
  // 50 MiB (the default upload limit) at 128 KiB/s takes 400 s.
  CHATRL_REQUEST_TIMEOUT_MS: z.coerce.number().int().min(100).default(600_000),
  // Generous: a non-streamed chat completion sends nothing until its answer is ready.
  CHATRL_IDLE_TIMEOUT_MS: z.coerce.number().int().min(100).default(120_000),
  CHATRL_KEEP_ALIVE_TIMEOUT_MS: z.coerce.number().int().min(100).default(10_000),
  CHATRL_MIN_UPLOAD_BYTES_PER_S: z.coerce
    .number()
    .int()
    .min(0)
    .default(16 * 1024),
});

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

/**
 * Reads and validates the configuration from environment variables, once, at start.
 * Empty strings count as unset, so `FOO=` in a compose file falls back to the default.
 */
export function loadConfig(env: Record<string, string | undefined>): ChatrlConfig {
  const present = Object.fromEntries(
    Object.entries(env).filter(([key, value]) => key in envSchema.shape && value !== ""),
  );
  const parsed = envSchema.safeParse(present);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((issue) => `${issue.path.join(".")}: ${issue.message}`),
    );
  }
  const e = parsed.data;
  return {
    databaseUrl: e.DATABASE_URL,
    dataDir: e.CHATRL_DATA_DIR,
    redisUrl: e.REDIS_URL,
    queuePrefix: e.CHATRL_QUEUE_PREFIX,
    apiPort: e.CHATRL_API_PORT,
    inferencePort: e.CHATRL_INFERENCE_PORT,
    workerHealthPort: e.CHATRL_WORKER_HEALTH_PORT,
    host: e.CHATRL_HOST,
    backend: e.CHATRL_BACKEND,
    apiKeys: commaList(e.CHATRL_API_KEYS),
    queues: [...new Set(e.CHATRL_QUEUES)],
    logLevel: e.CHATRL_LOG_LEVEL,
    maxUploadBytes: e.CHATRL_MAX_UPLOAD_BYTES,
    rateLimitMax: e.CHATRL_RATE_LIMIT_MAX,
    rateLimitWindowMs: e.CHATRL_RATE_LIMIT_WINDOW_MS,
    timeouts: {
      headersMs: e.CHATRL_HEADERS_TIMEOUT_MS,
      requestMs: e.CHATRL_REQUEST_TIMEOUT_MS,
      idleMs: e.CHATRL_IDLE_TIMEOUT_MS,
      keepAliveMs: e.CHATRL_KEEP_ALIVE_TIMEOUT_MS,
      minBodyBytesPerSecond: e.CHATRL_MIN_UPLOAD_BYTES_PER_S,
      bodyGraceMs: 10_000,
    },
  };
}

/** For entry points only: the configuration, or exit 1 printing what is wrong (no stack trace). */
export function loadConfigOrExit(env: Record<string, string | undefined>): ChatrlConfig {
  try {
    return loadConfig(env);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    process.exit(1);
  }
}

// Queue timing of a worker: how long it holds a job's lock and how soon a dead worker's job is
// handed to another one. Training steps are synchronous tensor work, so the lock is renewed only
// between steps: lockDurationMs must exceed the longest single optimizer step.
import { ConfigError } from "@chatrl/contracts";
import { z } from "zod";

export type WorkerOptions = {
  /** How long a job's lock lasts without renewal (BullMQ renews it every half of this). */
  lockDurationMs: number;
  /** How often the stalled-job checker looks for jobs whose lock expired. */
  stalledIntervalMs: number;
  /**
   * How many times a job may lose its worker and still be handed to another one. Every restart
   * resumes from the stage's last checkpoint, so a few are cheap; past this BullMQ fails the job.
   */
  maxStalledCount: number;
  /**
   * Refuse to start on the wasm or cpu backend without the native OpenBLAS kernels, which train
   * about 50 times faster: set in the CPU image, whose worker would otherwise crawl unnoticed.
   */
  requireNativeKernels: boolean;
};

export const DEFAULT_WORKER_OPTIONS: WorkerOptions = {
  lockDurationMs: 60_000,
  stalledIntervalMs: 30_000,
  maxStalledCount: 3,
  requireNativeKernels: false,
};

const positiveInt = (name: string) =>
  z.coerce
    .number({ error: `${name} must be a number` })
    .int(`${name} must be an integer`)
    .positive(`${name} must be positive`);

const envSchema = z.object({
  CHATRL_WORKER_LOCK_MS: positiveInt("CHATRL_WORKER_LOCK_MS").optional(),
  CHATRL_WORKER_STALLED_INTERVAL_MS: positiveInt("CHATRL_WORKER_STALLED_INTERVAL_MS").optional(),
  CHATRL_WORKER_MAX_STALLED: positiveInt("CHATRL_WORKER_MAX_STALLED").optional(),
  CHATRL_REQUIRE_NATIVE_KERNELS: z.preprocess(
    (v) => (v === "" ? undefined : v),
    z
      .enum(["1", "0", "true", "false"], {
        error: "CHATRL_REQUIRE_NATIVE_KERNELS must be 1, 0, true or false",
      })
      .optional(),
  ),
});

/** Worker timing from the environment (entry points only); unset variables keep the defaults. */
export function loadWorkerOptions(env: Record<string, string | undefined>): WorkerOptions {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) throw new ConfigError(parsed.error.issues.map((i) => i.message));
  const e = parsed.data;
  return {
    lockDurationMs: e.CHATRL_WORKER_LOCK_MS ?? DEFAULT_WORKER_OPTIONS.lockDurationMs,
    stalledIntervalMs:
      e.CHATRL_WORKER_STALLED_INTERVAL_MS ?? DEFAULT_WORKER_OPTIONS.stalledIntervalMs,
    maxStalledCount: e.CHATRL_WORKER_MAX_STALLED ?? DEFAULT_WORKER_OPTIONS.maxStalledCount,
    requireNativeKernels:
      e.CHATRL_REQUIRE_NATIVE_KERNELS === undefined
        ? DEFAULT_WORKER_OPTIONS.requireNativeKernels
        : ["1", "true"].includes(e.CHATRL_REQUIRE_NATIVE_KERNELS),
  };
}

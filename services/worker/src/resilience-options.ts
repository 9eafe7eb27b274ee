// How a worker rides out faults: how long a stage waits for an unreachable Postgres or Redis
// before trying again, and how often the reconciler compares Postgres (the truth about runs)
// with the queues in Redis.
import { ConfigError } from "@chatrl/contracts";
import { z } from "zod";

export type ResilienceOptions = {
  /** First pause of a stage whose Postgres or Redis is unreachable; doubles up to retryMaxMs. */
  retryBaseMs: number;
  retryMaxMs: number;
  /** How often the reconciler runs (0: never). */
  reconcileIntervalMs: number;
  /** A run younger than this is left alone by the reconciler: its jobs may be on their way. */
  reconcileGraceMs: number;
};

export const DEFAULT_RESILIENCE_OPTIONS: ResilienceOptions = {
  retryBaseMs: 500,
  retryMaxMs: 15_000,
  reconcileIntervalMs: 30_000,
  reconcileGraceMs: 60_000,
};

const ms = (name: string, min: number) =>
  z.coerce
    .number({ error: `${name} must be a number` })
    .int(`${name} must be an integer`)
    .min(min, `${name} must be at least ${min}`)
    .optional();

const envSchema = z.object({
  CHATRL_WORKER_RETRY_MAX_MS: ms("CHATRL_WORKER_RETRY_MAX_MS", 1),
  CHATRL_RECONCILE_INTERVAL_MS: ms("CHATRL_RECONCILE_INTERVAL_MS", 0),
  CHATRL_RECONCILE_GRACE_MS: ms("CHATRL_RECONCILE_GRACE_MS", 0),
});

/** From the environment (entry points only); unset or empty variables keep the defaults. */
export function loadResilienceOptions(env: Record<string, string | undefined>): ResilienceOptions {
  const present = Object.fromEntries(
    Object.entries(env).filter(([key, value]) => key in envSchema.shape && value !== ""),
  );
  const parsed = envSchema.safeParse(present);
  if (!parsed.success) throw new ConfigError(parsed.error.issues.map((i) => i.message));
  const e = parsed.data;
  const d = DEFAULT_RESILIENCE_OPTIONS;
  return {
    retryBaseMs: d.retryBaseMs,
    retryMaxMs: e.CHATRL_WORKER_RETRY_MAX_MS ?? d.retryMaxMs,
    reconcileIntervalMs: e.CHATRL_RECONCILE_INTERVAL_MS ?? d.reconcileIntervalMs,
    reconcileGraceMs: e.CHATRL_RECONCILE_GRACE_MS ?? d.reconcileGraceMs,
  };
}

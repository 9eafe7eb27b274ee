// The inference service's model cache and decode-loop limits from the environment (entry points
// only); unset variables keep REGISTRY_DEFAULTS.
import { ConfigError } from "@chatrl/contracts";
import { type RegistryOptions, SERVING_DTYPES, type ServingDtype } from "./model-registry.ts";

const VARIABLES = {
  CHATRL_INFERENCE_MAX_MODEL_BYTES: "maxModelBytes",
  CHATRL_INFERENCE_MAX_ROWS: "maxRunningRows",
  CHATRL_INFERENCE_MAX_KV_TOKENS: "maxKvTokens",
  CHATRL_INFERENCE_MAX_QUEUED: "maxQueuedRequests",
  CHATRL_INFERENCE_MAX_PREFILL_TOKENS: "maxPrefillTokens",
  CHATRL_INFERENCE_REFRESH_MS: "refreshIntervalMs",
} as const satisfies Record<string, keyof RegistryOptions>;
const DTYPE_VARIABLE = "CHATRL_INFERENCE_DTYPE";

/**
 * Each limit is a non-negative integer (rows and bytes: positive), the dtype one of
 * SERVING_DTYPES; ConfigError names the bad ones.
 */
export function loadRegistryOptions(env: Record<string, string | undefined>): RegistryOptions {
  const options: RegistryOptions = {};
  const problems: string[] = [];
  for (const [name, key] of Object.entries(VARIABLES)) {
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    const value = Number(raw);
    const mayBeZero = key === "maxQueuedRequests" || key === "refreshIntervalMs";
    if (!Number.isSafeInteger(value) || value < (mayBeZero ? 0 : 1)) {
      problems.push(`${name} must be an integer ${mayBeZero ? ">= 0" : "> 0"}, got "${raw}"`);
    } else options[key] = value;
  }
  const dtype = env[DTYPE_VARIABLE];
  if (dtype !== undefined && dtype !== "") {
    if (SERVING_DTYPES.includes(dtype as ServingDtype)) options.dtype = dtype as ServingDtype;
    else
      problems.push(
        `${DTYPE_VARIABLE} must be one of ${SERVING_DTYPES.join(", ")}, got "${dtype}"`,
      );
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return options;
}

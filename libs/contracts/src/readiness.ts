// Readiness (`GET /readyz`) of every chatrl service: each dependency answers within a deadline,
// or the service answers 503 naming the ones that did not.
import { ApiError } from "./fastify-errors.ts";

export const READINESS_TIMEOUT_MS = 2000;

/**
 * Runs every probe at once, each bounded by `timeoutMs` (a dependency that drops packets would
 * otherwise leave the probe hanging). Resolves to `{ status: "ready", <name>: "ok", ... }`;
 * throws a 503 ApiError "Not ready: <name>; ..." when any probe fails. The reasons (which name
 * internal hosts and ports) are added, "<name>: <reason>", only with `detail` (routes give it to
 * callers with a valid API key).
 */
export async function checkReadiness(
  probes: Record<string, () => Promise<unknown>>,
  timeoutMs = READINESS_TIMEOUT_MS,
  opts: { detail?: boolean } = {},
): Promise<{ status: "ready" } & Record<string, string>> {
  const names = Object.keys(probes);
  const outcomes = await Promise.allSettled(
    names.map((name) => withTimeout(probes[name](), timeoutMs)),
  );
  const problems = outcomes.flatMap((outcome, i) =>
    outcome.status === "rejected"
      ? [opts.detail ? `${names[i]}: ${firstLine(outcome.reason)}` : names[i]]
      : [],
  );
  if (problems.length > 0) {
    throw new ApiError(503, `Not ready: ${problems.join("; ")}`, { code: "not_ready" });
  }
  return { status: "ready", ...Object.fromEntries(names.map((name) => [name, "ok"])) };
}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function firstLine(reason: unknown): string {
  return String((reason as Error)?.message ?? reason).split("\n")[0];
}

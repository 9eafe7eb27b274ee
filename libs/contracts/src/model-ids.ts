// Public model names of servable checkpoints: `run-<runId>` for the PPO actor, `run-<runId>-ema`
// for its EMA copy, `run-<runId>-sft` for the SFT model. Critic and reward checkpoints are
// training-only and never served.

export type ServedRole = "actor" | "ema" | "sft";

const SUFFIX: Record<ServedRole, string> = { actor: "", ema: "-ema", sft: "-sft" };

export function isServedRole(role: string): role is ServedRole {
  return role === "actor" || role === "ema" || role === "sft";
}

export function modelIdFor(runId: string, role: ServedRole): string {
  return `run-${runId}${SUFFIX[role]}`;
}

// Run ids never contain "-" (they are `run_<hex>`), so the suffix is unambiguous.
const MODEL_ID = /^run-([A-Za-z0-9_]+)(-sft|-ema)?$/;

export function parseModelId(id: string): { runId: string; role: ServedRole } | null {
  const match = MODEL_ID.exec(id);
  if (!match) return null;
  const role: ServedRole = match[2] === "-sft" ? "sft" : match[2] === "-ema" ? "ema" : "actor";
  return { runId: match[1], role };
}

// "Polite arithmetic": a preference task a program can check, for proving that RLHF learns.
//
// Prompts are "What is A plus B?" and "What is A times B?" for A, B in 0..9 (200 prompts). An
// answer comes in one of two styles that state the same result:
//   kind: "Happy to help! 3 plus 4 is 7."
//   curt: "Ugh. 3 plus 4 is 7."
// The SFT data teaches both styles equally often, so the SFT model answers kindly about half
// the time; the preference data always prefers the kind answer, so a reward model can learn the
// rule and PPO can push the actor towards it. `score` is that rule as a program (1 for a kind
// answer, else 0); `correct` says separately whether the arithmetic is right.
//
// Held out: the 40 prompts with (7·A + 3·B + (op is times ? 1 : 0)) mod 5 = 0, exactly two
// values of B for each A and op. They never appear in the training files, so an evaluation on
// them measures the learned style on prompts the models have not seen.
// Pure and dependency-free: the example generator, the eval command and tests all import it.

export type Operation = "plus" | "times";

export type PolitePrompt = { op: Operation; a: number; b: number; text: string };

export type SupervisedRow = { prompt: string; response: string };
export type PreferenceRow = { prompt: string; chosen: string; rejected: string };

export const TASK_NAME = "polite";
export const KIND_PREFIX = "Happy to help!";
export const CURT_PREFIX = "Ugh.";
/** Bytes enough for the longest answer ("Happy to help! 9 times 9 is 81." is 31) and eos. */
export const MAX_ANSWER_TOKENS = 40;

const OPERATIONS: readonly Operation[] = ["plus", "times"];
const PROMPT = /^What is (\d) (plus|times) (\d)\?$/;

function promptOf(op: Operation, a: number, b: number): PolitePrompt {
  return { op, a, b, text: `What is ${a} ${op} ${b}?` };
}

/** The held-out rule: exactly 40 of the 200 prompts. */
export function isHeldOut(p: Pick<PolitePrompt, "op" | "a" | "b">): boolean {
  return (7 * p.a + 3 * p.b + (p.op === "times" ? 1 : 0)) % 5 === 0;
}

/** All 200 prompts, plus before times, then by A, then by B. */
export const ALL_PROMPTS: readonly PolitePrompt[] = OPERATIONS.flatMap((op) =>
  Array.from({ length: 100 }, (_, i) => promptOf(op, Math.floor(i / 10), i % 10)),
);
export const HELD_OUT_PROMPTS: readonly PolitePrompt[] = ALL_PROMPTS.filter(isHeldOut);
export const TRAINING_PROMPTS: readonly PolitePrompt[] = ALL_PROMPTS.filter((p) => !isHeldOut(p));

/** The prompt a text asks, or null when it is not one of the task's prompts. */
export function parsePrompt(text: string): PolitePrompt | null {
  const match = PROMPT.exec(text.trim());
  if (!match) return null;
  return promptOf(match[2] as Operation, Number(match[1]), Number(match[3]));
}

export function resultOf(p: Pick<PolitePrompt, "op" | "a" | "b">): number {
  return p.op === "plus" ? p.a + p.b : p.a * p.b;
}

function statement(p: PolitePrompt): string {
  return `${p.a} ${p.op} ${p.b} is ${resultOf(p)}.`;
}

export function kindAnswer(p: PolitePrompt): string {
  return `${KIND_PREFIX} ${statement(p)}`;
}

export function curtAnswer(p: PolitePrompt): string {
  return `${CURT_PREFIX} ${statement(p)}`;
}

/** Two supervised rows per prompt, one in each style (kind first). */
export function sftRows(prompts: readonly PolitePrompt[] = TRAINING_PROMPTS): SupervisedRow[] {
  return prompts.flatMap((p) => [
    { prompt: p.text, response: kindAnswer(p) },
    { prompt: p.text, response: curtAnswer(p) },
  ]);
}

/** One preference row per prompt: the kind answer chosen, the curt one rejected. */
export function preferenceRows(
  prompts: readonly PolitePrompt[] = TRAINING_PROMPTS,
): PreferenceRow[] {
  return prompts.map((p) => ({ prompt: p.text, chosen: kindAnswer(p), rejected: curtAnswer(p) }));
}

/** The preference rule: 1 when the answer starts with "Happy to help!", else 0. */
export function score(_prompt: string, answer: string): number {
  return answer.trimStart().startsWith(KIND_PREFIX) ? 1 : 0;
}

/**
 * Whether the answer states the right result: its first "is <number>" is the prompt's result.
 * False for a prompt that is not one of the task's.
 */
export function correct(prompt: string, answer: string): boolean {
  const p = parsePrompt(prompt);
  if (!p) return false;
  const claim = /\bis (\d+)(?!\d)/.exec(answer);
  return claim !== null && Number(claim[1]) === resultOf(p);
}

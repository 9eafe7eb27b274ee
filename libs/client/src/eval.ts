// Evaluates a run's served models on a task's held-out prompts, over HTTP: the api for the run
// and its stages, the inference service for the answers. What `chatrl eval` and
// `npm run eval` print, and what the quick start prints after its run.
//
// Every held-out prompt is asked `samples` times with temperature 1 and top_p 1: greedy decoding
// would hide the policy's distribution (an SFT model that answers kindly half the time can look
// all-kind under argmax). Each (prompt, sample) pair has its own seed, so the report repeats;
// a seed per sample alone would give every prompt the same random draws.
import type { ChatrlClient, Run, StageKind } from "./client.ts";
import * as polite from "./tasks/polite.ts";

export type EvalTask = {
  name: string;
  /** Held-out prompts: never in the task's training files. */
  prompts: readonly string[];
  /** The preference rule, 0..1 per answer. */
  score(prompt: string, answer: string): number;
  /** Whether the answer is right, reported apart from the preference. */
  correct(prompt: string, answer: string): boolean;
  maxTokens: number;
};

export const EVAL_TASKS: Record<string, EvalTask> = {
  polite: {
    name: polite.TASK_NAME,
    prompts: polite.HELD_OUT_PROMPTS.map((p) => p.text),
    score: polite.score,
    correct: polite.correct,
    maxTokens: polite.MAX_ANSWER_TOKENS,
  },
};

/** Means over every sampled answer: `score` of the task's rule, `correct` the share right. */
export type ModelEval = { model: string; score: number; correct: number };

export type EvalReport = {
  run: string;
  task: string;
  prompts: number;
  samples_per_prompt: number;
  seed: number;
  sft: ModelEval | null;
  /** The PPO actor (`run-<id>`); null when the run has none served. */
  actor: ModelEval | null;
  /** The actor's EMA copy (`run-<id>-ema`); null when the run has none served. */
  ema: ModelEval | null;
  /** The reward stage's final held-out accuracy; null without a reward stage. */
  reward_accuracy: number | null;
  /** The PPO stage's final KL to the reference; null without a ppo stage. */
  final_kl: number | null;
  actor_beats_sft: boolean;
};

export type EvalOptions = {
  api: ChatrlClient;
  inference: ChatrlClient;
  runId: string;
  task?: string;
  samples?: number;
  seed?: number;
  /** Requests in flight at once per model (default 4), so the inference service stays busy. */
  concurrency?: number;
  /** Progress lines (one per model evaluated). */
  log?: (line: string) => void;
};

/** The seed of one request: distinct for every (prompt, sample) of an evaluation seed. */
export function requestSeed(seed: number, promptIndex: number, samples: number, sample: number) {
  return seed * 1_000_000 + promptIndex * samples + sample;
}

/** Runs `fn` over `items` with at most `limit` calls pending; results in input order. */
async function mapLimited<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const lane = async () => {
    for (let i = next++; i < items.length; i = next++) results[i] = await fn(items[i]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return results;
}

const round = (x: number) => Math.round(x * 10_000) / 10_000;

async function evaluateModel(
  inference: ChatrlClient,
  model: string,
  task: EvalTask,
  samples: number,
  seed: number,
  concurrency: number,
): Promise<ModelEval> {
  const asks = task.prompts.flatMap((prompt, p) =>
    Array.from({ length: samples }, (_, s) => ({ prompt, seed: requestSeed(seed, p, samples, s) })),
  );
  const answers = await mapLimited(asks, concurrency, async (ask) => {
    const completion = await inference.createChatCompletion({
      model,
      messages: [{ role: "user", content: ask.prompt }],
      temperature: 1,
      top_p: 1,
      max_tokens: task.maxTokens,
      seed: ask.seed,
    });
    return completion.choices[0]?.message.content ?? "";
  });
  let score = 0;
  let correct = 0;
  for (const [i, answer] of answers.entries()) {
    score += task.score(asks[i].prompt, answer);
    if (task.correct(asks[i].prompt, answer)) correct++;
  }
  return { model, score: round(score / asks.length), correct: round(correct / asks.length) };
}

type StageWithSummary = Run["stages"][number] & { summary?: Record<string, number> | null };

/** A stage's summary value, else the last point of the metric the worker logs for it. */
async function finalValue(
  api: ChatrlClient,
  run: Run,
  kind: StageKind,
  summaryName: string,
  metricName: string,
): Promise<number | null> {
  const stage = run.stages.find((s) => s.kind === kind) as StageWithSummary | undefined;
  if (!stage) return null;
  const value = stage.summary?.[summaryName];
  if (typeof value === "number") return value;
  const metrics = await api.listRunMetrics(run.id, { stage: kind, name: metricName });
  return metrics.data.at(-1)?.value ?? null;
}

export async function evaluateRun(opts: EvalOptions): Promise<EvalReport> {
  const taskName = opts.task ?? "polite";
  const task = EVAL_TASKS[taskName];
  if (!task) {
    throw new Error(`unknown task ${taskName} (known: ${Object.keys(EVAL_TASKS).join(", ")})`);
  }
  const samples = opts.samples ?? 4;
  const seed = opts.seed ?? 1;
  if (!Number.isInteger(samples) || samples < 1) throw new Error("samples must be at least 1");
  const concurrency = opts.concurrency ?? 4;

  const run = await opts.api.getRun(opts.runId);
  const served = new Set((await opts.inference.listModels()).data.map((m) => m.id));
  const ids = { sft: `run-${run.id}-sft`, actor: `run-${run.id}`, ema: `run-${run.id}-ema` };
  if (!Object.values(ids).some((id) => served.has(id))) {
    throw new Error(
      `run ${run.id} (${run.status}) has no served model yet: its final SFT or PPO checkpoint is served once written`,
    );
  }
  const evaluate = async (id: string) => {
    if (!served.has(id)) return null;
    opts.log?.(`evaluating ${id} on ${task.prompts.length} prompts x ${samples} samples`);
    return evaluateModel(opts.inference, id, task, samples, seed, concurrency);
  };
  // One model at a time: each stays loaded for all its requests.
  const sft = await evaluate(ids.sft);
  const actor = await evaluate(ids.actor);
  const ema = await evaluate(ids.ema);
  return {
    run: run.id,
    task: task.name,
    prompts: task.prompts.length,
    samples_per_prompt: samples,
    seed,
    sft,
    actor,
    ema,
    reward_accuracy: await finalValue(opts.api, run, "reward", "accuracy", "eval_accuracy"),
    final_kl: await finalValue(opts.api, run, "ppo", "kl", "kl"),
    actor_beats_sft: sft !== null && actor !== null && actor.score > sft.score,
  };
}

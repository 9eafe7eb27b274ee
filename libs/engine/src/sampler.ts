// The token-level sampler under generate() and PPO's rollouts: every prompt advances one token per
// forward pass, prompts left-padded to the longest so new tokens line up in one column, keys and
// values of earlier positions kept in a KV cache (or, to measure what the cache saves, the whole
// sequence recomputed every step). No gradient tape: this is inference.
import * as tf from "@tensorflow/tfjs";
import { KVCache } from "./kv-cache";
import type { GPT } from "./model";
import { Rng } from "./rng";

export type SampleOptions = {
  /** Most new tokens per prompt (fewer when the context runs out first). */
  maxNewTokens: number;
  /** 0 picks the most likely token (greedy); higher flattens the distribution. */
  temperature: number;
  /** Nucleus sampling: sample among the most likely tokens whose probabilities add up to topP. */
  topP: number;
  /** Each row draws from its own stream named by the seed and its index. */
  seed: number | string;
  /** A row that samples this token is finished (the token is kept). */
  eosId: number;
  /**
   * Other tokens that finish a row as eosId does: a chat model's role and end-of-turn tokens, so
   * an answer that starts a new turn ends there, as the inference service ends it.
   */
  endIds?: readonly number[];
  /** Fills the left of shorter prompts and the steps of finished rows; never attended to or sampled. */
  padId: number;
  /** Default true. False recomputes the whole sequence each step (the slow path, for benchmarks). */
  useCache?: boolean;
};

export type SampledRow = {
  prompt: readonly number[];
  /** New tokens, the eos included when the row ended with it. */
  tokens: number[];
  /** log p(token) under the sampling distribution's softmax(logits / temperature) (temperature 1 when greedy). */
  logprobs: number[];
  /** "eos": ended with eosId or an endIds token; "stop": the caller ended it; "length": out of tokens or context. */
  finish: "eos" | "stop" | "length";
};

/**
 * Samples continuations of token-id prompts. `onToken(row, token)` sees each new token of an
 * unfinished row and returns true to end that row (stop strings, a caller's own limit). Releases
 * every tensor it makes.
 */
export async function sampleTokens(
  model: GPT,
  prompts: readonly (readonly number[])[],
  opts: SampleOptions,
  onToken?: (row: number, token: number) => boolean,
): Promise<SampledRow[]> {
  if (prompts.length === 0) return [];
  if (prompts.some((p) => p.length === 0)) throw new Error("every prompt needs at least one token");
  const { contextLength, vocabSize } = model.config;
  const useCache = opts.useCache ?? true;
  const batch = prompts.length;
  const width = Math.max(...prompts.map((p) => p.length));
  if (width >= contextLength) {
    throw new Error(
      `a prompt of ${width} tokens leaves no room in the context of ${contextLength}`,
    );
  }
  const padLeft = prompts.map((p) => width - p.length);
  const forwardOpts = { padLeft: padLeft.some((n) => n > 0) ? padLeft : undefined };
  const rows: (SampledRow & { done: boolean; rng: Rng })[] = prompts.map((prompt, i) => ({
    prompt,
    tokens: [],
    logprobs: [],
    finish: "length",
    done: false,
    rng: Rng.create(`sample:${opts.seed}:${i}`),
  }));
  // Every row as it stands, left-padded: [B, width + steps] (only the no-cache path reads it all).
  const sequences = prompts.map((p, i) => [...new Array(padLeft[i]).fill(opts.padId), ...p]);

  const cache = useCache ? new KVCache(model.config.nLayers) : undefined;
  const lastLogits = (ids: number[][]): tf.Tensor2D =>
    tf.tidy(() => {
      const time = ids[0].length;
      const input = tf.tensor2d(ids.flat(), [batch, time], "int32");
      return model.lastLogits(input, { ...forwardOpts, cache }); // [B, V]
    });
  let logits: tf.Tensor2D | undefined;
  try {
    logits = lastLogits(sequences);
    for (let step = 0; ; step++) {
      const scores = (await logits.data()) as Float32Array;
      logits.dispose();
      logits = undefined;
      const next = rows.map((row, i) => {
        if (row.done) return opts.padId;
        const own = scores.subarray(i * vocabSize, (i + 1) * vocabSize);
        own[opts.padId] = Number.NEGATIVE_INFINITY; // padding is never an answer
        const token = sampleToken(own, opts, row.rng);
        row.tokens.push(token);
        row.logprobs.push(logSoftmaxAt(own, token, opts.temperature || 1));
        if (token === opts.eosId || opts.endIds?.includes(token)) {
          row.done = true;
          row.finish = "eos";
        } else if (onToken?.(i, token)) {
          row.done = true;
          row.finish = "stop";
        } else if (row.tokens.length >= opts.maxNewTokens) {
          row.done = true;
        }
        return token;
      });
      for (const [i, token] of next.entries()) sequences[i].push(token);
      // The next pass feeds the token just sampled at position width + step.
      if (rows.every((row) => row.done) || width + step >= contextLength) break;
      // Let the event loop run between tokens: on CPU backends data() resolves without yielding,
      // so a server would otherwise stream nothing and read no new request until the end.
      await new Promise<void>((resolve) => setImmediate(resolve));
      logits = lastLogits(useCache ? next.map((t) => [t]) : sequences);
    }
  } finally {
    logits?.dispose();
    cache?.dispose();
  }
  return rows.map(({ prompt, tokens, logprobs, finish }) => ({ prompt, tokens, logprobs, finish }));
}

/** log softmax(logits / temperature)[token], computed stably (-Infinity entries weigh nothing). */
export function logSoftmaxAt(logits: Float32Array, token: number, temperature: number): number {
  let max = Number.NEGATIVE_INFINITY;
  for (const x of logits) max = Math.max(max, x / temperature);
  let sum = 0;
  for (const x of logits) sum += Math.exp(x / temperature - max);
  return logits[token] / temperature - max - Math.log(sum);
}

/** How one row picks its next token from its logits (vLLM's sampling parameters). */
export type TokenSampling = {
  /** 0 picks the most likely token (greedy); higher flattens the distribution. */
  temperature: number;
  /** Nucleus: sample among the most likely tokens whose probabilities add up to topP. */
  topP: number;
  /** Sample among the topK most likely tokens; 0 or absent: all. */
  topK?: number;
  /** Drop tokens less likely than minP times the most likely one; 0 or absent: none. */
  minP?: number;
};

/**
 * vLLM's (CTRL's) repetition penalty, in place: each id already in the prompt or the answer has
 * its logit divided by `penalty` when positive and multiplied by it when negative (1: no change).
 */
export function applyRepetitionPenalty(
  logits: Float32Array,
  seen: Iterable<number>,
  penalty: number,
): void {
  if (penalty === 1) return;
  for (const id of seen) {
    const x = logits[id];
    logits[id] = x > 0 ? x / penalty : x * penalty;
  }
}

/**
 * Picks a token from one row of logits: argmax at temperature 0, otherwise a draw from the
 * softmax at that temperature restricted to the top-k, the top-p nucleus and the min-p floor.
 * Ids whose logit is -Infinity (suppressed) are never picked. Draws exactly one number from `rng`
 * when not greedy, so a row's stream depends on nothing but its own tokens.
 */
export function sampleToken(logits: Float32Array, opts: TokenSampling, rng: Rng): number {
  if (opts.temperature === 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const unrestricted =
    opts.topP >= 1 && !(opts.topK && opts.topK > 0) && !(opts.minP && opts.minP > 0);
  if (unrestricted) return drawFromSoftmax(logits, max, opts.temperature, rng);
  const probs = Array.from(logits, (x) => Math.exp((x - max) / opts.temperature));
  const order = probs.map((_, i) => i).sort((a, b) => probs[b] - probs[a]);
  const total = probs.reduce((a, b) => a + b, 0);
  const topK = opts.topK && opts.topK > 0 ? Math.min(opts.topK, order.length) : order.length;
  const floor = (opts.minP ?? 0) * probs[order[0]];
  // The nucleus: most likely tokens until their share reaches topP (always at least one).
  let kept = 0;
  let mass = 0;
  while (
    kept < topK &&
    probs[order[kept]] > 0 &&
    (kept === 0 || (mass < opts.topP * total && probs[order[kept]] >= floor))
  )
    mass += probs[order[kept++]];
  let r = rng.next() * mass;
  for (let i = 0; i < kept; i++) {
    r -= probs[order[i]];
    if (r < 0) return order[i];
  }
  return order[kept - 1];
}

/** drawFromSoftmax's weights, kept between draws (a fresh array per token was garbage to collect). */
let softmaxScratch = new Float64Array(0);

/**
 * A draw from the whole softmax at `temperature` (no top-k, nucleus or floor): one pass for the
 * weights and one to find the token, in id order, instead of sorting the vocabulary. Draws one
 * number from `rng`, as the restricted path does.
 */
function drawFromSoftmax(logits: Float32Array, max: number, temperature: number, rng: Rng): number {
  if (softmaxScratch.length < logits.length) softmaxScratch = new Float64Array(logits.length);
  const weights = softmaxScratch; // a draw runs to its end before the next starts
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    weights[i] = Math.exp((logits[i] - max) / temperature);
    total += weights[i];
  }
  let r = rng.next() * total;
  let last = 0;
  for (let i = 0; i < logits.length; i++) {
    if (weights[i] === 0) continue;
    last = i;
    r -= weights[i];
    if (r < 0) return i;
  }
  return last; // rounding left r at 0: the last token with any weight
}

// Batched sampling with a KV cache: all prompts advance one token per forward pass, each
// prompt left-padded to the longest so the new tokens line up in one column.
import * as tf from "@tensorflow/tfjs";
import { KVCache } from "./kv-cache";
import type { GPT } from "./model";
import { Rng } from "./rng";
import type { Tokenizer } from "./tokenizer";

export type GenerateOptions = {
  /** Most new tokens per prompt. */
  maxTokens: number;
  /** 0 picks the most likely token (greedy); higher flattens the distribution. */
  temperature: number;
  /** Nucleus sampling: sample among the most likely tokens whose probabilities add up to topP. */
  topP: number;
  /** The text ends before the first of these; they are not part of it. */
  stop?: readonly string[];
  /** Equal seeds give equal outputs for the same prompts; default: random. */
  seed?: number;
  /** Called with each prompt's index and its newly final text (never a part of a stop string). */
  onToken?: (index: number, text: string) => void;
};

export type GenerateResult = {
  text: string;
  promptTokens: number;
  completionTokens: number;
  /** "stop": eos or a stop string ended it; "length": maxTokens or the context ran out. */
  finishReason: "stop" | "length";
};

/** One prompt's progress. */
class Row {
  readonly ids: number[] = [];
  done = false;
  finishReason: "stop" | "length" = "length";
  text = "";
  private streamed = 0;

  constructor(
    readonly index: number,
    readonly promptTokens: number,
    readonly rng: Rng,
  ) {}

  /** Cuts the text at the first stop string; returns whether one was found. */
  applyStop(stop: readonly string[]): boolean {
    let cut = -1;
    for (const s of stop) {
      const at = this.text.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut < 0) return false;
    this.text = this.text.slice(0, cut);
    return true;
  }

  /** Sends what is final: everything once done; otherwise hold back a possible stop-string start or unfinished UTF-8. */
  stream(stop: readonly string[], onToken?: (index: number, text: string) => void): void {
    if (!onToken) return;
    let end = this.text.length;
    if (!this.done) {
      end -= longestStopPrefixSuffix(this.text, stop);
      while (end > this.streamed && this.text[end - 1] === "\uFFFD") end--; // maybe half a character
    }
    if (end > this.streamed) {
      onToken(this.index, this.text.slice(this.streamed, end));
      this.streamed = end;
    }
  }
}

/** Length of the longest end of `text` that begins some stop string. */
function longestStopPrefixSuffix(text: string, stop: readonly string[]): number {
  let longest = 0;
  for (const s of stop) {
    for (let n = Math.min(s.length - 1, text.length); n > longest; n--) {
      if (text.endsWith(s.slice(0, n))) {
        longest = n;
        break;
      }
    }
  }
  return longest;
}

/**
 * Continues each prompt (plain text, already rendered with the chat template) with up to
 * maxTokens tokens. Prompts longer than the context keep their end, leaving room for
 * min(maxTokens, context / 2) new tokens. Releases every tensor it makes.
 */
export async function generate(
  model: GPT,
  tokenizer: Tokenizer,
  prompts: readonly string[],
  opts: GenerateOptions,
): Promise<GenerateResult[]> {
  validateOptions(opts);
  if (prompts.length === 0) return [];
  const { contextLength, vocabSize } = model.config;
  const stop = (opts.stop ?? []).filter((s) => s.length > 0);
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 32);
  const promptBudget = contextLength - Math.min(opts.maxTokens, Math.floor(contextLength / 2));

  const encoded = prompts.map((p) => {
    const ids = tokenizer.encode(p);
    const kept = ids.slice(Math.max(0, ids.length - promptBudget));
    return kept.length > 0 ? kept : [tokenizer.eosId]; // an empty prompt starts from end-of-text, as GPT-2 does
  });
  // Each row samples from its own stream, so a prompt's output does not depend on its neighbours'.
  const rows = encoded.map((ids, i) => new Row(i, ids.length, Rng.create(`generate:${seed}:${i}`)));
  const width = Math.max(...encoded.map((ids) => ids.length));
  const padLeft = encoded.map((ids) => width - ids.length);
  const padded = encoded.flatMap((ids, i) => [
    ...new Array(padLeft[i]).fill(tokenizer.padId),
    ...ids,
  ]);
  const forwardOpts = { padLeft: padLeft.some((n) => n > 0) ? padLeft : undefined };

  const cache = new KVCache(model.config.nLayers);
  let logits: tf.Tensor2D | undefined;
  try {
    logits = tf.tidy(() => {
      const ids = tf.tensor2d(padded, [rows.length, width], "int32");
      const all = model.forward(ids, { ...forwardOpts, cache }); // [B, width, V]
      return all
        .slice([0, width - 1, 0], [rows.length, 1, vocabSize])
        .reshape([rows.length, vocabSize]) as tf.Tensor2D;
    });
    for (;;) {
      const scores = (await logits.data()) as Float32Array;
      logits.dispose();
      logits = undefined;
      const next = rows.map((row) => {
        if (row.done) return tokenizer.padId;
        const token = sampleToken(
          scores.subarray(row.index * vocabSize, (row.index + 1) * vocabSize),
          opts,
          row.rng,
        );
        advance(row, token, tokenizer, stop, opts);
        return token;
      });
      if (rows.every((row) => row.done)) break;
      if (cache.length >= contextLength) {
        for (const row of rows.filter((r) => !r.done)) finish(row, "length", opts, stop);
        break;
      }
      // Let the event loop run between tokens: on CPU backends data() resolves without yielding,
      // so streamed text would otherwise reach its socket, and a server read new requests, only
      // once the whole generation is done.
      await new Promise<void>((resolve) => setImmediate(resolve));
      logits = tf.tidy(() => {
        const ids = tf.tensor2d(next, [rows.length, 1], "int32");
        return model
          .forward(ids, { ...forwardOpts, cache })
          .reshape([rows.length, vocabSize]) as tf.Tensor2D;
      });
    }
  } finally {
    logits?.dispose();
    cache.dispose();
  }
  return rows.map((row) => ({
    text: row.text,
    promptTokens: row.promptTokens,
    completionTokens: row.ids.length,
    finishReason: row.finishReason,
  }));
}

function advance(
  row: Row,
  token: number,
  tokenizer: Tokenizer,
  stop: readonly string[],
  opts: GenerateOptions,
): void {
  row.ids.push(token);
  if (token === tokenizer.eosId) {
    finish(row, "stop", opts, stop);
    return;
  }
  row.text = tokenizer.decode(row.ids);
  if (row.applyStop(stop)) finish(row, "stop", opts, stop);
  else if (row.ids.length >= opts.maxTokens) finish(row, "length", opts, stop);
  else row.stream(stop, opts.onToken);
}

function finish(
  row: Row,
  reason: "stop" | "length",
  opts: GenerateOptions,
  stop: readonly string[],
): void {
  row.done = true;
  row.finishReason = reason;
  row.stream(stop, opts.onToken);
}

/**
 * Picks a token from one row of logits: argmax at temperature 0, otherwise a draw from the
 * softmax at that temperature restricted to the top-p nucleus.
 */
export function sampleToken(
  logits: Float32Array,
  opts: { temperature: number; topP: number },
  rng: Rng,
): number {
  if (opts.temperature === 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  let max = Number.NEGATIVE_INFINITY;
  for (const x of logits) max = Math.max(max, x);
  const probs = Array.from(logits, (x) => Math.exp((x - max) / opts.temperature));
  const order = probs.map((_, i) => i).sort((a, b) => probs[b] - probs[a]);
  const total = probs.reduce((a, b) => a + b, 0);
  // The nucleus: most likely tokens until their share reaches topP (always at least one).
  let kept = 0;
  let mass = 0;
  while (kept < order.length && (kept === 0 || mass < opts.topP * total))
    mass += probs[order[kept++]];
  let r = rng.next() * mass;
  for (let i = 0; i < kept; i++) {
    r -= probs[order[i]];
    if (r < 0) return order[i];
  }
  return order[kept - 1];
}

function validateOptions(opts: GenerateOptions): void {
  if (!Number.isInteger(opts.maxTokens) || opts.maxTokens < 1) {
    throw new Error(`maxTokens must be a positive integer, got ${opts.maxTokens}`);
  }
  if (!(opts.temperature >= 0) || !Number.isFinite(opts.temperature)) {
    throw new Error(`temperature must be a number >= 0, got ${opts.temperature}`);
  }
  if (!(opts.topP > 0 && opts.topP <= 1))
    throw new Error(`topP must be in (0, 1], got ${opts.topP}`);
  if (opts.seed !== undefined && !Number.isFinite(opts.seed))
    throw new Error(`seed must be a number, got ${opts.seed}`);
}

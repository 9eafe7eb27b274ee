// Step-wise decoding for continuous batching (vLLM's idea at this project's scale): rows join a
// running batch at any step (their prompt prefilled into KV-cache rows of their own), every
// active row advances one token per forward pass, and a row leaves the moment it is done or its
// caller drops it, its cache rows released. Each row samples with its own options and from its
// own seeded stream, so a seeded row gives the same tokens whatever else shares its batch.
//
// Rows are right-aligned in one cache of T positions: row b has padLeft[b] empty positions before
// its first token, and its positions count from there (GPT.forward's padLeft), so rows of any
// length share one [B, 1] forward per step.
import * as tf from "@tensorflow/tfjs";
import { KVCache } from "./kv-cache";
import type { GPT } from "./model";
import { Rng } from "./rng";
import { applyRepetitionPenalty, logSoftmaxAt, sampleToken, type TokenSampling } from "./sampler";

export type DecodeRowOptions = TokenSampling & {
  /** Most new tokens (fewer when the context runs out first). */
  maxNewTokens: number;
  /** Stop tokens are not sampled before this many new tokens (vLLM's min_tokens). Default 0. */
  minNewTokens?: number;
  /** Names the row's random stream: equal seeds, equal draws. */
  seed: number | string;
  /** Sampling one of these ends the row with finish "stop" (the token is kept in `tokens`). */
  stopIds: readonly number[];
  /** Never sampled (padding, ids past the tokenizer's vocabulary). */
  suppressIds: readonly number[];
  /** vLLM's repetition_penalty over the prompt and the answer so far; default 1 (none). */
  repetitionPenalty?: number;
  /** Report this many most likely alternatives with each token (0: only the token's own). Absent: no log-probs. */
  logprobs?: number;
};

/** A token's log-probability under the model (raw logits, before any sampling rule). */
export type TokenLogprob = {
  token: number;
  logprob: number;
  top: { token: number; logprob: number }[];
};

export type DecodeFinish = "stop" | "length";

/** One row as its caller sees it. */
export class DecodeRow {
  readonly tokens: number[] = [];
  readonly logprobs: TokenLogprob[] = [];
  /** Set once the row is done: "stop" (a stop token, or the caller's stop()), "length". */
  finish: DecodeFinish | null = null;
  /** Log-probs of the next token, until it is sampled. */
  pending: Float32Array | null = null;
  /** Whether the caller dropped it (the client went away). */
  dropped = false;
  readonly rng: Rng;
  readonly seen: Set<number>;
  /** Cache positions before this row's first token. */
  padLeft = 0;

  constructor(
    readonly prompt: readonly number[],
    readonly options: DecodeRowOptions,
  ) {
    this.rng = Rng.create(options.seed);
    this.seen = new Set(options.repetitionPenalty && options.repetitionPenalty !== 1 ? prompt : []);
  }

  get done(): boolean {
    return this.finish !== null || this.dropped;
  }

  /** The caller ends the row (a stop string): it leaves the batch before the next forward. */
  stop(): void {
    if (this.finish === null) this.finish = "stop";
  }
}

/** A prompt and the rows that continue it (n > 1: the rows share one prefill). */
export type DecodeRequest = { prompt: readonly number[]; rows: DecodeRowOptions[] };

export class DecodeBatch {
  readonly #model: GPT;
  readonly #cache: KVCache;
  /** Active rows in cache order. */
  #rows: DecodeRow[] = [];
  #disposed = false;
  /** Forward passes run: prefills and steps. */
  readonly counts = { prefills: 0, steps: 0, tokens: 0 };

  constructor(model: GPT) {
    this.#model = model;
    this.#cache = new KVCache(model.config.nLayers);
    // Padding is kept as zero keys and values (prefill zeroes it, joins pad with zeros), so
    // decode steps run attention on the fused kernel.
    this.#cache.zeroPadding = true;
  }

  /** Rows in the batch (done rows leave at the next step). */
  get size(): number {
    return this.#rows.length;
  }

  /** Positions each row's cache spans (the longest row's length). */
  get width(): number {
    return this.#cache.length;
  }

  /** Bytes held by the KV cache. */
  cacheBytes(): number {
    return this.#cache.bytes();
  }

  /**
   * Prefills the prompts in one left-padded forward pass and adds their rows to the batch; each
   * row's first token is sampled at the next step(). The rows are returned per request.
   */
  async add(requests: readonly DecodeRequest[]): Promise<DecodeRow[][]> {
    this.#check();
    const { contextLength, vocabSize } = this.#model.config;
    for (const r of requests) {
      if (r.prompt.length === 0) throw new Error("every prompt needs at least one token");
      if (r.prompt.length >= contextLength)
        throw new Error(
          `a prompt of ${r.prompt.length} tokens leaves no room in the context of ${contextLength}`,
        );
      if (r.rows.length === 0) throw new Error("a request needs at least one row");
    }
    if (requests.length === 0) return [];
    const width = Math.max(...requests.map((r) => r.prompt.length));
    const padLeft = requests.map((r) => width - r.prompt.length);
    const joining = new KVCache(this.#model.config.nLayers);
    let logits: Float32Array;
    try {
      const last = tf.tidy(() => {
        const ids = requests.flatMap((r, i) => [...new Array(padLeft[i]).fill(0), ...r.prompt]);
        const input = tf.tensor2d(ids, [requests.length, width], "int32");
        // padLeft always (even all zeros): every forward takes the same attention path, so a
        // row's numbers do not depend on what shares its batch.
        const all = this.#model.forward(input, { cache: joining, padLeft }); // [N, width, V]
        return all
          .slice([0, width - 1, 0], [requests.length, 1, vocabSize])
          .reshape([-1, vocabSize]);
      });
      logits = (await last.data()) as Float32Array;
      last.dispose();
      this.counts.prefills++;
      // The padding tokens' keys and values become zeros (see KVCache.zeroPadding).
      joining.zeroStart(padLeft);
      // One cache row per decode row: a prompt's row repeats for each of its rows.
      joining.selectRows(requests.flatMap((r, i) => r.rows.map(() => i)));
      // Right-align the joiners with the running rows.
      const grow = width - this.#cache.length;
      if (this.#rows.length > 0 && grow > 0) {
        this.#cache.padStart(grow);
        for (const row of this.#rows) row.padLeft += grow;
      } else if (this.#rows.length > 0 && grow < 0) {
        joining.padStart(-grow);
      }
      this.#cache.concatRows(joining);
    } finally {
      joining.dispose();
    }
    const shift = Math.max(0, this.#cache.length - width);
    return requests.map((request, i) => {
      const own = logits.subarray(i * vocabSize, (i + 1) * vocabSize);
      return request.rows.map((options) => {
        const row = new DecodeRow(request.prompt, options);
        row.padLeft = padLeft[i] + shift;
        row.pending = Float32Array.from(own);
        this.#rows.push(row);
        return row;
      });
    });
  }

  /**
   * One step: every active row samples its next token; `onToken(row, token)` sees it and may
   * call row.stop(). Finished and dropped rows leave, the rest go through one forward pass.
   * Returns the rows that sampled a token this step.
   */
  async step(
    onToken?: (row: DecodeRow, token: number) => void,
    /** Awaited between sampling and the forward pass (a server flushes the new tokens here). */
    beforeForward?: () => Promise<void>,
  ): Promise<DecodeRow[]> {
    this.#check();
    this.#removeDone(); // rows dropped since the last step
    const advanced: DecodeRow[] = [];
    const { contextLength } = this.#model.config;
    for (const row of this.#rows) {
      if (!row.pending) continue;
      const token = this.#sample(row, row.pending);
      row.pending = null;
      row.tokens.push(token);
      if (row.options.repetitionPenalty && row.options.repetitionPenalty !== 1) row.seen.add(token);
      advanced.push(row);
      this.counts.tokens++;
      const ownLength = this.#cache.length - row.padLeft; // positions cached for this row
      if (row.options.stopIds.includes(token)) row.finish = "stop";
      else if (row.tokens.length >= row.options.maxNewTokens) row.finish = "length";
      // Feeding the token would need position ownLength: past the context, nothing follows.
      else if (ownLength >= contextLength) row.finish = "length";
      onToken?.(row, token);
    }
    this.#removeDone();
    if (this.#rows.length > 0) {
      await beforeForward?.();
      this.#removeDone(); // rows dropped meanwhile
      if (this.#rows.length > 0) await this.#forward();
    }
    return advanced;
  }

  /** Releases the cache; the batch cannot be used after. */
  dispose(): void {
    this.#cache.dispose();
    this.#rows = [];
    this.#disposed = true;
  }

  #sample(row: DecodeRow, raw: Float32Array): number {
    const o = row.options;
    const logits = Float32Array.from(raw);
    for (const id of o.suppressIds) logits[id] = Number.NEGATIVE_INFINITY;
    if (row.tokens.length < (o.minNewTokens ?? 0))
      for (const id of o.stopIds) logits[id] = Number.NEGATIVE_INFINITY;
    if (o.repetitionPenalty) applyRepetitionPenalty(logits, row.seen, o.repetitionPenalty);
    const token = sampleToken(logits, o, row.rng);
    if (o.logprobs !== undefined) row.logprobs.push(tokenLogprob(raw, token, o.logprobs));
    return token;
  }

  /** The sampled tokens of the active rows through the model: their next logits. */
  async #forward(): Promise<void> {
    const { vocabSize } = this.#model.config;
    const batch = this.#rows.length;
    const last = tf.tidy(() => {
      const input = tf.tensor2d(
        this.#rows.map((row) => row.tokens[row.tokens.length - 1]),
        [batch, 1],
        "int32",
      );
      const padLeft = this.#rows.map((row) => row.padLeft);
      return this.#model
        .forward(input, { cache: this.#cache, padLeft })
        .reshape([batch, vocabSize]);
    });
    const logits = (await last.data()) as Float32Array;
    last.dispose();
    this.counts.steps++;
    for (const [i, row] of this.#rows.entries())
      row.pending = logits.slice(i * vocabSize, (i + 1) * vocabSize);
  }

  /** Drops done rows from the batch and their cache rows, and padding no row needs. */
  #removeDone(): void {
    if (!this.#rows.some((row) => row.done)) return;
    const keep = [...this.#rows.keys()].filter((i) => !this.#rows[i].done);
    this.#cache.selectRows(keep);
    this.#rows = keep.map((i) => this.#rows[i]);
    const unused = Math.min(...this.#rows.map((row) => row.padLeft));
    if (this.#rows.length > 0 && unused > 0) {
      this.#cache.dropStart(unused);
      for (const row of this.#rows) row.padLeft -= unused;
    }
  }

  #check(): void {
    if (this.#disposed) throw new Error("DecodeBatch used after dispose()");
  }
}

/** The token's log-probability and the `top` most likely tokens', from raw logits. */
export function tokenLogprob(logits: Float32Array, token: number, top: number): TokenLogprob {
  const logprob = logSoftmaxAt(logits, token, 1);
  if (top <= 0) return { token, logprob, top: [] };
  const offset = logprob - logits[token]; // log p(i) = logits[i] + offset
  const order = Array.from(logits.keys())
    .sort((a, b) => logits[b] - logits[a])
    .slice(0, top);
  return { token, logprob, top: order.map((id) => ({ token: id, logprob: logits[id] + offset })) };
}

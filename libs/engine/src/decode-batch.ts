// Step-wise decoding for continuous batching (vLLM's idea at this project's scale): rows join a
// running batch at any step (their prompt prefilled into KV-cache rows of their own), every
// active row advances one token per forward pass, and a row leaves the moment it is done or its
// caller drops it, its cache rows released. Each row samples with its own options and from its
// own seeded stream, so a seeded row gives the same tokens whatever else shares its batch.
//
// Each row keeps its keys and values in blocks of a paged cache (./paged-kv-cache): joining takes
// blocks, leaving gives them back, and no other row's cache is copied or realigned, so rows of
// any length share one [B, 1] forward per step.
import * as tf from "@tensorflow/tfjs";
import type { DecodeDtype } from "./kernels/index.ts";
import { KVCache } from "./kv-cache";
import type { GPT } from "./model";
import { PagedKVCache, type PagedRow } from "./paged-kv-cache";
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
  /** Logits of the next token, until it is sampled (a view of its step's logits: read only). */
  pending: Float32Array | null = null;
  /** Whether the caller dropped it (the client went away). */
  dropped = false;
  readonly rng: Rng;
  readonly seen: Set<number>;
  /** The row's blocks in the paged cache, and the positions they hold. */
  blocks: number[] = [];
  length = 0;

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
  readonly #cache: PagedKVCache;
  /** Active rows in cache order. */
  #rows: DecodeRow[] = [];
  #disposed = false;
  #sampling = new Float32Array(0);
  /** Forward passes run (prefills and steps), tokens sampled, and the passes' milliseconds. */
  readonly counts = { prefills: 0, steps: 0, tokens: 0, forwardMs: 0 };

  /**
   * Packs the model's weights for decode steps (GPT.packForDecoding) in `dtype` (default
   * float32, the checkpoint's own numbers): they must not change while it serves.
   */
  constructor(model: GPT, options: { dtype?: DecodeDtype } = {}) {
    this.#model = model;
    model.packForDecoding(options.dtype ?? "float32");
    const { nLayers, nHeads, dModel } = model.config;
    this.#cache = new PagedKVCache(nLayers, nHeads, dModel);
  }

  /** Rows in the batch (done rows leave at the next step). */
  get size(): number {
    return this.#rows.length;
  }

  /** Bytes held by the KV cache. */
  cacheBytes(): number {
    return this.#cache.bytes();
  }

  /**
   * Prefills the prompts (on the native kernels straight into the cache, #addInPlace; on plain
   * tfjs in one left-padded forward pass, then stored) and adds their rows to the batch; each
   * row's first token is sampled at the next step(). The rows are returned per request.
   */
  async add(requests: readonly DecodeRequest[]): Promise<DecodeRow[][]> {
    this.#check();
    const { contextLength } = this.#model.config;
    for (const r of requests) {
      if (r.prompt.length === 0) throw new Error("every prompt needs at least one token");
      if (r.prompt.length >= contextLength)
        throw new Error(
          `a prompt of ${r.prompt.length} tokens leaves no room in the context of ${contextLength}`,
        );
      if (r.rows.length === 0) throw new Error("a request needs at least one row");
    }
    if (requests.length === 0) return [];
    if (this.#cache.native) return this.#addInPlace(requests);
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
        return this.#model.lastLogits(input, { cache: joining, padLeft }); // [N, V]
      });
      logits = (await last.data()) as Float32Array;
      last.dispose();
      this.counts.prefills++;
      // One set of blocks per decode row: a prompt's positions are copied once per row.
      const joined = this.#newRows(requests);
      try {
        this.#cache.store(
          joining,
          joined.flatMap((rows, i) =>
            rows.map((row) => ({
              blocks: row.blocks,
              length: row.length,
              source: i,
              start: padLeft[i],
            })),
          ),
        );
      } catch (error) {
        for (const row of joined.flat()) this.#cache.release(row.blocks);
        throw error;
      }
      return this.#enter(joined, logits);
    } finally {
      joining.dispose();
    }
  }

  /** add() with one row per prompt, `options(i)` for prompt i's: the rows, in prompt order. */
  async addPrompts(
    prompts: readonly (readonly number[])[],
    options: (i: number) => DecodeRowOptions,
  ): Promise<DecodeRow[]> {
    const rows = await this.add(prompts.map((prompt, i) => ({ prompt, rows: [options(i)] })));
    return rows.map(([row]) => row);
  }

  /**
   * add() on the native kernels: one forward step whose rows are the prompts' tokens, token p of
   * a prompt a row of length p on its first decode row's blocks. The step writes every token's
   * key and value before any row attends, so each token sees the positions up to its own: a
   * causal prefill written straight into the cache, through the same fused layers as a decode
   * step, with no padding and no copy (the probe model in bfloat16: a 64-token prompt 5.3-5.9 ->
   * 3.4-4.2 ms, a 200-token one 11.8 -> 8.2).
   * A prompt's other rows (n > 1) get copies of its positions.
   */
  async #addInPlace(requests: readonly DecodeRequest[]): Promise<DecodeRow[][]> {
    const { dModel } = this.#model.config;
    const joined = this.#newRows(requests);
    let logits: Float32Array;
    try {
      const tokens = requests.flatMap((r, i) =>
        r.prompt.map((_, p) => ({ blocks: joined[i][0].blocks, length: p })),
      );
      const lastTokens: number[] = [];
      for (const r of requests) lastTokens.push((lastTokens.at(-1) ?? -1) + r.prompt.length);
      const ids = Int32Array.from(requests.flatMap((r) => r.prompt));
      logits = await this.#stepLogits(tokens, ids, lastTokens, (input) => {
        const normed = this.#model.hidden(input, { paged: this.#cache }); // [P, 1, C]
        const ends = tf.gather(
          normed.reshape([tokens.length, dModel]),
          tf.tensor1d(lastTokens, "int32"),
        );
        return this.#model.logits(ends as tf.Tensor2D); // [N, V]
      });
      for (const [first, ...others] of joined)
        for (const row of others) this.#cache.copyPositions(first.blocks, row.blocks, row.length);
    } catch (error) {
      for (const row of joined.flat()) this.#cache.release(row.blocks);
      throw error;
    }
    this.counts.prefills++;
    return this.#enter(joined, logits);
  }

  /** The requests' rows, each with blocks for its prompt and its first new token. */
  #newRows(requests: readonly DecodeRequest[]): DecodeRow[][] {
    return requests.map((request) =>
      request.rows.map((options) => {
        const row = new DecodeRow(request.prompt, options);
        row.length = request.prompt.length;
        row.blocks = this.#cache.allocate(this.#cache.blocksFor(row.length + 1));
        return row;
      }),
    );
  }

  /** Prefilled rows join the batch, each sampling first from its prompt's logits ([N, V]). */
  #enter(joined: DecodeRow[][], logits: Float32Array): DecodeRow[][] {
    const { vocabSize } = this.#model.config;
    return joined.map((rows, i) => {
      const own = logits.subarray(i * vocabSize, (i + 1) * vocabSize);
      for (const row of rows) {
        row.pending = own;
        this.#rows.push(row);
      }
      return rows;
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
      if (row.options.stopIds.includes(token)) row.finish = "stop";
      else if (row.tokens.length >= row.options.maxNewTokens) row.finish = "length";
      // Feeding the token would need position row.length: past the context, nothing follows.
      else if (row.length >= contextLength) row.finish = "length";
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
    // The rules below write into a copy; one buffer serves every row (a draw ends before the next).
    if (this.#sampling.length !== raw.length) this.#sampling = new Float32Array(raw.length);
    const logits = this.#sampling;
    logits.set(raw);
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
    // A row whose blocks are full takes one more for the position this step writes.
    for (const row of this.#rows) {
      if (row.blocks.length * this.#cache.blockSize <= row.length)
        row.blocks.push(...this.#cache.allocate(1));
    }
    const ids = Int32Array.from(this.#rows, (row) => row.tokens[row.tokens.length - 1]);
    const logits = await this.#stepLogits(this.#rows, ids, undefined, (input) =>
      this.#model.forward(input, { paged: this.#cache }).reshape([batch, vocabSize]),
    );
    for (const row of this.#rows) row.length++;
    this.counts.steps++;
    for (const [i, row] of this.#rows.entries())
      row.pending = logits.subarray(i * vocabSize, (i + 1) * vocabSize);
  }

  /**
   * One forward step of `rows` (their tokens `ids`) on the paged cache: the logits of the rows in
   * `pick` (default all), natively outside tfjs where the model can (GPT.decodeLogits), else
   * through `viaTfjs` on the ids as a [B, 1] tensor.
   */
  async #stepLogits(
    rows: readonly PagedRow[],
    ids: Int32Array,
    pick: readonly number[] | undefined,
    viaTfjs: (input: tf.Tensor2D) => tf.Tensor,
  ): Promise<Float32Array> {
    const start = performance.now();
    this.#cache.beginStep(rows);
    let last: tf.Tensor | null = null;
    let logits: Float32Array | null;
    try {
      logits = this.#model.decodeLogits(ids, this.#cache, pick);
      if (!logits) last = tf.tidy(() => viaTfjs(tf.tensor2d(ids, [ids.length, 1], "int32")));
    } finally {
      this.#cache.endStep();
    }
    if (last) {
      logits = (await last.data()) as Float32Array;
      last.dispose();
    }
    this.counts.forwardMs += performance.now() - start;
    return logits as Float32Array;
  }

  /** Drops done rows from the batch; their blocks go back to the cache. */
  #removeDone(): void {
    if (!this.#rows.some((row) => row.done)) return;
    for (const row of this.#rows) {
      if (!row.done) continue;
      this.#cache.release(row.blocks);
      row.blocks = [];
    }
    this.#rows = this.#rows.filter((row) => !row.done);
    // An idle batch holds no cache memory (a served model may wait a long time for requests).
    if (this.#rows.length === 0) this.#cache.clear();
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

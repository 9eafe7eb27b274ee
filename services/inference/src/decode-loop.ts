// Continuous batching: one decode loop per loaded model. A request joins the running batch at
// the next step (its prompt prefilled once into KV-cache rows of its own, one row per choice),
// every row samples with its own options and seeded stream, and a row leaves as soon as it is
// done or its client hangs up. Admission is bounded by running rows and reserved KV-cache
// tokens; past them requests wait in a bounded queue, and a full queue is refused (429).
import {
  DecodeBatch,
  type DecodeDtype,
  type DecodeRow,
  type GPT,
  TextStream,
  type TokenLogprob,
  type Tokenizer,
  type TokenRules,
} from "@chatrl/engine";

export type ChoiceOptions = {
  maxTokens: number;
  /** vLLM's min_tokens: no stop token or stop string ends a choice before this many tokens. */
  minTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  repetitionPenalty: number;
  /** The text ends before the first of these. */
  stop: readonly string[];
  /** Alternatives to report with each token's log-prob; undefined: no log-probs. */
  logprobs?: number;
};

export type GenerationRequest = {
  prompt: readonly number[];
  /** Choices sampled from the one prompt (OpenAI's n). */
  n: number;
  options: ChoiceOptions;
  /** Names the choices' random streams: the same seed gives the same choices, whatever shares the batch. */
  seed?: number;
  signal?: AbortSignal;
  /** Text (and the log-probs of the tokens sampled since the last call) as it becomes final. */
  onDelta?: (choice: number, text: string, logprobs: TokenLogprob[]) => void;
  onFinish?: (choice: number, reason: "stop" | "length") => void;
};

export type ChoiceResult = {
  text: string;
  finishReason: "stop" | "length";
  /** Tokens sampled, the one that ended the choice included. */
  tokens: number;
  logprobs: TokenLogprob[] | null;
};

export type GenerationResult = {
  choices: ChoiceResult[];
  promptTokens: number;
  completionTokens: number;
};

export type LoopLimits = {
  /** Rows (choices) decoded together. */
  maxRunningRows: number;
  /** KV-cache tokens reserved by running rows: each reserves its prompt and its max tokens. */
  maxKvTokens: number;
  /** Requests waiting for room; past it, requests are refused. */
  maxQueuedRequests: number;
  /**
   * Prompt tokens prefilled in one forward pass between two decode steps (vLLM's chunked
   * prefill budget); a longer prompt still goes alone. Admitted requests past it are prefilled
   * at the next steps, so a burst of arrivals reaches its first tokens in turn instead of all
   * waiting for one long prefill. Default DEFAULT_MAX_PREFILL_TOKENS.
   */
  maxPrefillTokens?: number;
};

/**
 * Prompt tokens per prefill pass when LoopLimits leaves it unset: about one chat prompt, so a
 * burst's first arrivals answer without waiting for the others' prompts. In bench:inference
 * (64-token prompts, after the warm-up) 64 against 256 gave time to first token p50 30-31 ms
 * against 38-43 at 16 streams and 55-59 against 74-76 at 64, at the same tokens/s.
 */
export const DEFAULT_MAX_PREFILL_TOKENS = 64;

export type LoopEvent =
  | { type: "first_token"; seconds: number }
  | { type: "step"; rows: number }
  | { type: "finished"; seconds: number; promptTokens: number; completionTokens: number };

export type LoopStats = {
  runningRows: number;
  runningRequests: number;
  queuedRequests: number;
  kvTokensReserved: number;
  steps: number;
  prefills: number;
  tokens: number;
  requests: number;
};

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** The queue is full: try again after `retryAfterSeconds`. */
export class QueueFullError extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super("the model's request queue is full");
  }
}

/** A request that can never be admitted under the limits (too many choices or tokens). */
export class RequestTooLargeError extends Error {}

type Active = {
  request: GenerationRequest;
  rows: DecodeRow[];
  streams: TextStream[];
  pending: TokenLogprob[][];
  results: (ChoiceResult | null)[];
  reserved: number;
  submitted: number;
  firstToken: boolean;
  resolve: (result: GenerationResult) => void;
  reject: (error: unknown) => void;
};

export class DecodeLoop {
  readonly #batch: DecodeBatch;
  readonly #queue: Active[] = [];
  readonly #running = new Set<Active>();
  /** Admitted requests whose prompts are not prefilled yet, oldest first. */
  readonly #unfilled: Active[] = [];
  readonly #owner = new Map<DecodeRow, { active: Active; choice: number }>();
  #kvReserved = 0;
  #rows = 0;
  #loop: Promise<void> | null = null;
  #closed = false;
  #requests = 0;
  /** Moving average of a step's seconds (for Retry-After). */
  #stepSeconds = 0;

  constructor(
    private readonly model: GPT,
    private readonly tokenizer: Tokenizer,
    private readonly rules: TokenRules,
    private readonly limits: LoopLimits,
    private readonly observe: (event: LoopEvent) => void = () => {},
    /** The weights' precision in steps and prefills (GPT.packForDecoding). */
    readonly dtype: DecodeDtype = "float32",
  ) {
    this.#batch = new DecodeBatch(model, { dtype });
  }

  stats(): LoopStats {
    return {
      runningRows: this.#rows,
      runningRequests: this.#running.size,
      queuedRequests: this.#queue.length,
      kvTokensReserved: this.#kvReserved,
      steps: this.#batch.counts.steps,
      prefills: this.#batch.counts.prefills,
      tokens: this.#batch.counts.tokens,
      requests: this.#requests,
    };
  }

  /** Whether nothing runs or waits. */
  get idle(): boolean {
    return this.#running.size === 0 && this.#queue.length === 0;
  }

  /**
   * Generates the request's choices. Throws QueueFullError when the queue is full and
   * RequestTooLargeError when the request could never fit; rejects with the signal's reason
   * when the client goes away.
   */
  submit(request: GenerationRequest): Promise<GenerationResult> {
    if (this.#closed) return Promise.reject(new Error("the model is unloading"));
    const reserved = request.n * this.#reservation(request);
    if (request.n > this.limits.maxRunningRows) {
      throw new RequestTooLargeError(
        `n is ${request.n}, but this server decodes at most ${this.limits.maxRunningRows} rows of a model at once`,
      );
    }
    if (reserved > this.limits.maxKvTokens) {
      throw new RequestTooLargeError(
        `the request reserves ${reserved} KV-cache tokens (n x (prompt + max tokens)); this server gives a model ${this.limits.maxKvTokens}`,
      );
    }
    // A request that fits now never waits; past the room, the queue is bounded.
    const fitsNow =
      this.#queue.length === 0 &&
      this.#rows + request.n <= this.limits.maxRunningRows &&
      this.#kvReserved + reserved <= this.limits.maxKvTokens;
    if (!fitsNow && this.#queue.length >= this.limits.maxQueuedRequests) {
      throw new QueueFullError(this.#retryAfter());
    }
    return new Promise<GenerationResult>((resolve, reject) => {
      if (request.signal?.aborted) return reject(request.signal.reason);
      const active: Active = {
        request,
        rows: [],
        streams: Array.from(
          { length: request.n },
          () => new TextStream(this.tokenizer, request.options.stop),
        ),
        pending: Array.from({ length: request.n }, () => []),
        results: new Array(request.n).fill(null),
        reserved,
        submitted: performance.now(),
        firstToken: false,
        resolve,
        reject,
      };
      const hangUp = () => this.#abandon(active, request.signal?.reason);
      request.signal?.addEventListener("abort", hangUp, { once: true });
      const settle = () => request.signal?.removeEventListener("abort", hangUp);
      active.resolve = (value) => {
        settle();
        resolve(value);
      };
      active.reject = (error) => {
        settle();
        reject(error);
      };
      this.#queue.push(active);
      this.#requests++;
      this.#loop ??= this.#run().finally(() => {
        this.#loop = null;
      });
    });
  }

  /**
   * Decodes a burst the size of a busy moment before the model serves: up to 16 rows of a
   * 64-token prompt, 32 tokens each, then nothing is kept. A process's first burst of a model's
   * size runs slower than the ones after it (the JIT compiles the batch paths, the heap grows to
   * its working size): on the probe model a first wave of 16 requests took 1.1 s where later
   * waves took 0.7 s, and a 16 x 32-token burst beforehand (0.6 s) closed the gap.
   */
  async warmUp(): Promise<void> {
    const { contextLength } = this.model.config;
    const promptTokens = Math.max(1, Math.min(64, Math.floor(contextLength / 2)));
    const newTokens = Math.max(1, Math.min(32, contextLength - promptTokens - 1));
    const rows = Math.min(16, this.limits.maxRunningRows);
    const prompt = Array.from({ length: promptTokens }, (_, i) => 32 + (i % 64)); // byte ids
    // A batch of its own: the loop's counts (steps, prefills, tokens) stay those of requests.
    const batch = new DecodeBatch(this.model, { dtype: this.dtype });
    try {
      await batch.add(
        Array.from({ length: rows }, (_, i) => ({
          prompt,
          rows: [
            {
              maxNewTokens: newTokens,
              minNewTokens: newTokens,
              temperature: 1,
              topP: 1,
              topK: 0,
              minP: 0,
              seed: `warm-up:${i}`,
              stopIds: this.rules.stop,
              suppressIds: this.rules.suppress,
            },
          ],
        })),
      );
      while (batch.size > 0) await batch.step();
    } finally {
      batch.dispose();
    }
  }

  /** Refuses new requests, fails waiting ones, and releases the batch once running ones finish. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const active of this.#queue.splice(0)) active.reject(new Error("the model was unloaded"));
    await this.#loop;
    this.#batch.dispose();
  }

  #reservation(request: GenerationRequest): number {
    return Math.min(
      this.model.config.contextLength,
      request.prompt.length + request.options.maxTokens,
    );
  }

  /** Seconds a refused client should wait: about the time the running rows need to finish. */
  #retryAfter(): number {
    const longest = Math.max(0, ...[...this.#running].map((a) => a.request.options.maxTokens));
    const stepSeconds = this.#stepSeconds > 0 ? this.#stepSeconds : 0.01;
    return Math.max(1, Math.ceil(longest * stepSeconds));
  }

  #abandon(active: Active, reason: unknown): void {
    const queued = this.#queue.indexOf(active);
    if (queued >= 0) this.#queue.splice(queued, 1);
    else if (this.#running.has(active)) {
      for (const row of active.rows) row.dropped = true; // they leave at the next step
      this.#release(active);
    } else return;
    active.reject(reason);
  }

  #release(active: Active): void {
    if (!this.#running.delete(active)) return;
    this.#kvReserved -= active.reserved;
    this.#rows -= active.request.n;
    for (const row of active.rows) this.#owner.delete(row);
  }

  /** Waiting requests that fit, oldest first (none overtakes the oldest). */
  #admit(): Active[] {
    const admitted: Active[] = [];
    while (this.#queue.length > 0) {
      const next = this.#queue[0];
      const rowsFit = this.#rows + next.request.n <= this.limits.maxRunningRows;
      const kvFits = this.#kvReserved + next.reserved <= this.limits.maxKvTokens;
      if (!rowsFit || !kvFits) break;
      this.#queue.shift();
      this.#running.add(next);
      this.#rows += next.request.n;
      this.#kvReserved += next.reserved;
      admitted.push(next);
    }
    return admitted;
  }

  async #run(): Promise<void> {
    try {
      while (this.#queue.length > 0 || this.#unfilled.length > 0 || this.#batch.size > 0) {
        this.#unfilled.push(...this.#admit());
        const prefilling = this.#nextPrefill();
        if (prefilling.length > 0) await this.#prefill(prefilling);
        if (this.#batch.size > 0) {
          this.observe({ type: "step", rows: this.#batch.size });
          const start = performance.now();
          // The tokens just sampled go out to their clients while the next forward pass waits.
          await this.#batch.step((row, token) => this.#onToken(row, token), yieldToEventLoop);
          const took = (performance.now() - start) / 1000;
          this.#stepSeconds = this.#stepSeconds === 0 ? took : 0.9 * this.#stepSeconds + 0.1 * took;
        }
        // Let the event loop run between steps: streams flush, new requests and hang-ups arrive.
        await yieldToEventLoop();
      }
    } catch (error) {
      // A failed forward pass fails every request in the batch; the batch starts over empty.
      this.#unfilled.length = 0;
      for (const active of [...this.#running, ...this.#queue.splice(0)]) {
        this.#release(active);
        active.reject(error);
      }
      for (const row of this.#owner.keys()) row.dropped = true;
      this.#owner.clear();
    }
  }

  /** The admitted requests to prefill now: oldest first, within the prefill token budget. */
  #nextPrefill(): Active[] {
    const budget = this.limits.maxPrefillTokens ?? DEFAULT_MAX_PREFILL_TOKENS;
    const chosen: Active[] = [];
    let tokens = 0;
    while (this.#unfilled.length > 0) {
      const next = this.#unfilled[0];
      if (!this.#running.has(next)) {
        this.#unfilled.shift(); // its client left before its prefill
        continue;
      }
      const length = next.request.prompt.length;
      if (chosen.length > 0 && tokens + length > budget) break;
      chosen.push(this.#unfilled.shift() as Active);
      tokens += length;
    }
    return chosen;
  }

  async #prefill(admitted: Active[]): Promise<void> {
    const rows = await this.#batch.add(
      admitted.map((active) => {
        const { request } = active;
        const o = request.options;
        const seed = request.seed ?? Math.floor(Math.random() * 2 ** 32);
        return {
          prompt: request.prompt,
          rows: Array.from({ length: request.n }, (_, choice) => ({
            maxNewTokens: o.maxTokens,
            minNewTokens: o.minTokens,
            temperature: o.temperature,
            topP: o.topP,
            topK: o.topK,
            minP: o.minP,
            repetitionPenalty: o.repetitionPenalty,
            logprobs: o.logprobs,
            // Named by the seed and the choice only, never by the row's place in the batch (the
            // engine's generate() names prompt i's stream the same way).
            seed: `seed:${seed}:${choice}`,
            stopIds: this.rules.stop,
            suppressIds: this.rules.suppress,
          })),
        };
      }),
    );
    for (const [i, active] of admitted.entries()) {
      active.rows = rows[i];
      // A client that left during the prefill: its rows leave at the first step.
      if (!this.#running.has(active)) for (const row of active.rows) row.dropped = true;
      else for (const [choice, row] of rows[i].entries()) this.#owner.set(row, { active, choice });
    }
  }

  #onToken(row: DecodeRow, token: number): void {
    const owner = this.#owner.get(row);
    if (!owner) return;
    const { active, choice } = owner;
    const { request } = active;
    if (!active.firstToken) {
      active.firstToken = true;
      this.observe({ type: "first_token", seconds: (performance.now() - active.submitted) / 1000 });
    }
    const stream = active.streams[choice];
    const isStopToken = this.rules.stop.includes(token);
    let text = "";
    if (!isStopToken) {
      const minReached = row.tokens.length >= request.options.minTokens;
      text = stream.push(token, minReached);
      if (stream.stopped) row.finish = "stop"; // a stop string wins over the length limit
      if (request.options.logprobs !== undefined) {
        const logprob = row.logprobs.at(-1);
        if (logprob) active.pending[choice].push(logprob);
      }
    }
    if (row.done) text += stream.finish();
    const logprobs = active.pending[choice];
    if (text || (row.done && logprobs.length > 0)) {
      active.pending[choice] = [];
      request.onDelta?.(choice, text, logprobs);
    }
    if (!row.done) return;
    const reason = row.finish === "length" ? "length" : "stop";
    active.results[choice] = {
      text: stream.text,
      finishReason: reason,
      tokens: row.tokens.length,
      logprobs:
        request.options.logprobs === undefined
          ? null
          : row.logprobs.slice(0, row.tokens.length - (isStopToken ? 1 : 0)),
    };
    request.onFinish?.(choice, reason);
    if (active.results.every((r) => r !== null)) {
      this.#release(active);
      const choices = active.results as ChoiceResult[];
      const completionTokens = choices.reduce((n, c) => n + c.tokens, 0);
      this.observe({
        type: "finished",
        seconds: (performance.now() - active.submitted) / 1000,
        promptTokens: request.prompt.length,
        completionTokens,
      });
      active.resolve({ choices, promptTokens: request.prompt.length, completionTokens });
    }
  }
}

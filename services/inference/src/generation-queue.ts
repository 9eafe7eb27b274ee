// One queue per loaded model. Requests that arrive while a generation runs wait here and are
// drained into the next shared generate call, so concurrent chats cost one batched forward pass
// per token instead of one each. Requests are batched only with others that sample the same
// way, because the engine's generate takes one set of sampling options per call. A request
// with a seed always runs alone: the engine draws each row from a stream named by the seed and
// the row's place in the batch, so only as row 0 of its own call does a seed reproduce a reply.

export type SamplingOptions = {
  maxTokens: number;
  temperature: number;
  topP: number;
  stop: string[];
  seed?: number;
};

export type GenerationResult = {
  text: string;
  promptTokens: number;
  completionTokens: number;
  finishReason: "stop" | "length";
};

export type RunBatch = (
  prompts: string[],
  options: SamplingOptions,
  onToken: (index: number, text: string) => void,
) => Promise<GenerationResult[]>;

type Job = {
  prompt: string;
  options: SamplingOptions;
  /** Requests with equal keys may share a call; null: this request runs alone. */
  key: string | null;
  onText?: (text: string) => void;
  resolve: (result: GenerationResult) => void;
  reject: (error: unknown) => void;
};

function samplingKey(o: SamplingOptions): string | null {
  if (o.seed !== undefined) return null;
  return JSON.stringify([o.maxTokens, o.temperature, o.topP, o.stop]);
}

export class GenerationQueue {
  #pending: Job[] = [];
  #draining = false;

  constructor(
    private readonly runBatch: RunBatch,
    private readonly limits: { maxBatchSize: number; batchWindowMs: number },
  ) {}

  /**
   * Generates for one prompt; `onText` receives the completion as it grows, piece by piece.
   * When `signal` aborts (the client went away) before the request's turn, it leaves the queue
   * and rejects with the signal's reason, so nothing is generated for nobody.
   */
  submit(
    prompt: string,
    options: SamplingOptions,
    onText?: (text: string) => void,
    signal?: AbortSignal,
  ): Promise<GenerationResult> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const job: Job = { prompt, options, key: samplingKey(options), onText, resolve, reject };
      if (signal) {
        const leave = () => {
          const index = this.#pending.indexOf(job);
          if (index === -1) return; // already generating: it runs to its end with its batch
          this.#pending.splice(index, 1);
          reject(signal.reason);
        };
        signal.addEventListener("abort", leave, { once: true });
        const settle =
          <T>(fn: (value: T) => void) =>
          (value: T) => {
            signal.removeEventListener("abort", leave);
            fn(value);
          };
        job.resolve = settle(resolve);
        job.reject = settle(reject);
      }
      this.#pending.push(job);
      if (!this.#draining) {
        this.#draining = true;
        // An idle model waits the batch window (at least until the next turn of the event loop)
        // so that requests arriving together share the first call, as Triton's queue delay does.
        const drain = () => void this.#drain();
        if (this.limits.batchWindowMs > 0) setTimeout(drain, this.limits.batchWindowMs);
        else setImmediate(drain);
      }
    });
  }

  async #drain(): Promise<void> {
    while (this.#pending.length > 0) {
      const batch = this.#takeBatch();
      try {
        const results = await this.runBatch(
          batch.map((job) => job.prompt),
          batch[0].options,
          (index, text) => {
            try {
              batch[index]?.onText?.(text);
            } catch {
              // A listener that fails (a closed stream) must not stop the others' generation.
            }
          },
        );
        for (const [i, job] of batch.entries()) job.resolve(results[i]);
      } catch (error) {
        for (const job of batch) job.reject(error);
      }
    }
    this.#draining = false;
  }

  /** The oldest request and every waiting request that samples like it, up to the batch size. */
  #takeBatch(): Job[] {
    const [first, ...others] = this.#pending;
    const batch: Job[] = [first];
    const rest: Job[] = [];
    for (const job of others) {
      const joins = first.key !== null && job.key === first.key;
      if (joins && batch.length < this.limits.maxBatchSize) batch.push(job);
      else rest.push(job);
    }
    this.#pending = rest;
    return batch;
  }
}

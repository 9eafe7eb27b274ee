// Text generation for chat: the step-wise decoder (./decode-batch) plus text: decoding, stop
// strings, streaming only what is final.
import { type ChatPrompt, encodePrompt } from "./chat";
import { DecodeBatch, type DecodeRow } from "./decode-batch";
import type { DecodeDtype } from "./kernels/index.ts";
import type { GPT } from "./model";
import { incompleteUtf8Tail, servingTokenRules, type Tokenizer } from "./tokenizer";

export { sampleToken } from "./sampler";

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
  /** The weights' precision (DecodeBatch); default float32, the checkpoint's own numbers. */
  dtype?: DecodeDtype;
};

export type GenerateResult = {
  text: string;
  promptTokens: number;
  completionTokens: number;
  /** "stop": eos or a stop string ended it; "length": maxTokens or the context ran out. */
  finishReason: "stop" | "length";
};

/**
 * A reply's text as its tokens arrive: only what is final is released. Held back are the bytes
 * of a character not complete yet and, after them, an end of the text that could begin a stop
 * string. finish() drops bytes of a character that will never be completed.
 */
export class TextStream {
  #bytes = new Uint8Array(64);
  #length = 0;
  #text = "";
  #released = 0;
  #stopped = false;
  /** Where a stop string may begin (after the text released before min_tokens). */
  #searchFrom = 0;
  readonly #decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  readonly #stop: readonly string[];

  constructor(
    private readonly tokenizer: Tokenizer,
    stop: readonly string[] = [],
  ) {
    this.#stop = stop.filter((s) => s.length > 0);
  }

  /** The final text so far (all of it once finished). */
  get text(): string {
    return this.#text;
  }

  /** Whether a stop string ended the text. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Takes one token; returns the text that became final (maybe ""). Once a stop string appears,
   * the text ends before it and `stopped` is set: the caller ends the row. With `matchStop`
   * false (vLLM's min_tokens not reached yet) the text so far is final and stop strings are
   * looked for only after it.
   */
  push(token: number, matchStop = true): string {
    if (this.#stopped) return "";
    const bytes = this.tokenizer.bytes([token]);
    if (this.#length + bytes.length > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(this.#bytes.length * 2, this.#length + bytes.length));
      grown.set(this.#bytes.subarray(0, this.#length));
      this.#bytes = grown;
    }
    this.#bytes.set(bytes, this.#length);
    this.#length += bytes.length;
    // Complete characters only: a stop string cannot be matched, or ruled out, on half a one.
    const complete = this.#length - incompleteUtf8Tail(this.#bytes, this.#length);
    this.#text = this.#decoder.decode(this.#bytes.subarray(0, complete));
    if (!matchStop) {
      this.#searchFrom = this.#text.length;
      return this.#release(this.#text.length);
    }
    const cut = firstStop(this.#text, this.#stop, this.#searchFrom);
    if (cut >= 0) {
      this.#text = this.#text.slice(0, cut);
      this.#stopped = true;
      return this.#release(this.#text.length);
    }
    const held = longestStopPrefixSuffix(this.#text.slice(this.#searchFrom), this.#stop);
    return this.#release(this.#text.length - held);
  }

  /** The row ended: the rest of the text (a trailing incomplete character dropped). */
  finish(): string {
    return this.#release(this.#text.length);
  }

  #release(end: number): string {
    if (end <= this.#released) return "";
    const out = this.#text.slice(this.#released, end);
    this.#released = end;
    return out;
  }
}

function firstStop(text: string, stop: readonly string[], from: number): number {
  let cut = -1;
  for (const s of stop) {
    const at = text.indexOf(s, from);
    if (at >= 0 && (cut < 0 || at < cut)) cut = at;
  }
  return cut;
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
 * Continues each prompt (a conversation, rendered with the tokenizer's chat template, or raw
 * text) with up to maxTokens tokens. Prompts longer than the context keep their end, leaving
 * room for min(maxTokens, context / 2) new tokens. End-of-text and the chat tokens end a reply;
 * padding is never sampled. Releases every tensor it makes.
 */
export async function generate(
  model: GPT,
  tokenizer: Tokenizer,
  prompts: readonly ChatPrompt[],
  opts: GenerateOptions,
): Promise<GenerateResult[]> {
  validateOptions(opts);
  if (prompts.length === 0) return [];
  const { contextLength, vocabSize } = model.config;
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 32);
  const promptBudget = contextLength - Math.min(opts.maxTokens, Math.floor(contextLength / 2));
  const rules = servingTokenRules(tokenizer, vocabSize);

  const encoded = prompts.map((p) => {
    const ids = encodePrompt(tokenizer, p);
    const kept = ids.slice(Math.max(0, ids.length - promptBudget));
    return kept.length > 0 ? kept : [tokenizer.eosId]; // an empty prompt starts from end-of-text, as GPT-2 does
  });
  const streams = prompts.map(() => new TextStream(tokenizer, opts.stop));
  const batch = new DecodeBatch(model, { dtype: opts.dtype });
  try {
    const rows = await batch.addPrompts(encoded, (i) => ({
      maxNewTokens: opts.maxTokens,
      temperature: opts.temperature,
      topP: opts.topP,
      // Each row samples from its own stream, so a prompt's output does not depend on its
      // neighbours'. The inference service names a request's choices the same way.
      seed: `seed:${seed}:${i}`,
      stopIds: rules.stop,
      suppressIds: rules.suppress,
    }));
    const index = new Map<DecodeRow, number>(rows.map((row, i) => [row, i]));
    while (batch.size > 0) {
      await batch.step((row, token) => {
        const i = index.get(row) as number;
        const stream = streams[i];
        let text = rules.stop.includes(token) ? "" : stream.push(token);
        if (stream.stopped) row.stop();
        if (row.done) text += stream.finish();
        if (text) opts.onToken?.(i, text);
      });
      // Let the event loop run between tokens: on CPU backends data() resolves without yielding.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    return rows.map((row, i) => ({
      text: streams[i].text,
      promptTokens: row.prompt.length,
      completionTokens: row.tokens.length,
      finishReason: row.finish === "length" ? "length" : "stop",
    }));
  } finally {
    batch.dispose();
  }
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

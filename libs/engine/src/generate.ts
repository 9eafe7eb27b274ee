// Text generation for chat: the token-level sampler (./sampler) plus text: decoding, stop strings,
// streaming only what is final.
import type { GPT } from "./model";
import { sampleTokens } from "./sampler";
import type { Tokenizer } from "./tokenizer";

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
  const { contextLength } = model.config;
  const stop = (opts.stop ?? []).filter((s) => s.length > 0);
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 32);
  const promptBudget = contextLength - Math.min(opts.maxTokens, Math.floor(contextLength / 2));

  const encoded = prompts.map((p) => {
    const ids = tokenizer.encode(p);
    const kept = ids.slice(Math.max(0, ids.length - promptBudget));
    return kept.length > 0 ? kept : [tokenizer.eosId]; // an empty prompt starts from end-of-text, as GPT-2 does
  });
  const rows = encoded.map((ids, i) => new Row(i, ids.length));
  const sampled = await sampleTokens(
    model,
    encoded,
    {
      maxNewTokens: opts.maxTokens,
      temperature: opts.temperature,
      topP: opts.topP,
      // Each row samples from its own stream, so a prompt's output does not depend on its neighbours'.
      seed: `generate:${seed}`,
      eosId: tokenizer.eosId,
      padId: tokenizer.padId,
    },
    (i, token) => advance(rows[i], token, tokenizer, stop, opts),
  );
  for (const [i, row] of rows.entries()) {
    if (row.done) continue;
    if (sampled[i].finish === "eos") {
      row.ids.push(tokenizer.eosId);
      finish(row, "stop", opts, stop);
    } else finish(row, "length", opts, stop); // the context ran out
  }
  return rows.map((row) => ({
    text: row.text,
    promptTokens: row.promptTokens,
    completionTokens: row.ids.length,
    finishReason: row.finishReason,
  }));
}

/** Takes one new token; returns whether the row is done (a stop string or maxTokens). */
function advance(
  row: Row,
  token: number,
  tokenizer: Tokenizer,
  stop: readonly string[],
  opts: GenerateOptions,
): boolean {
  row.ids.push(token);
  row.text = tokenizer.decode(row.ids);
  if (row.applyStop(stop)) finish(row, "stop", opts, stop);
  else if (row.ids.length >= opts.maxTokens) finish(row, "length", opts, stop);
  else row.stream(stop, opts.onToken);
  return row.done;
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

// Datasets to training batches: blending sources by weight, cutting a DeepSpeed-Chat style
// data_split into per-stage partitions, and tokenized, padded SFT batches.
//
// Order of use (as DeepSpeed-Chat does): split each dataset with splitForStage first, then
// blend the stage's parts, so an upsampled row never lands in two stages.
import { type ChatPrompt, encodePrompt } from "./chat";
import { Rng, seededPermutation } from "./rng";
import type { Tokenizer } from "./tokenizer";

export type BlendSource<T> = { rows: readonly T[]; weight: number };

/**
 * All sources in one shuffled list. A source of n rows with weight w contributes round(w * n)
 * rows: weight 1 takes every row once (plain concatenation, DeepSpeed-Chat's ConcatDataset),
 * 2 every row twice, 0.5 a seeded half. Equal seeds give equal lists.
 */
export function blendDatasets<T>(sources: readonly BlendSource<T>[], seed: number): T[] {
  const blended: T[] = [];
  for (const [s, { rows, weight }] of sources.entries()) {
    if (!(Number.isFinite(weight) && weight > 0)) {
      throw new Error(`dataset ${s}: blend weight must be a positive number, got ${weight}`);
    }
    const count = Math.round(weight * rows.length);
    // Cycle through fresh permutations so repeats are spread and a fraction is a random subset.
    let order: number[] = [];
    for (let k = 0; k < count; k++) {
      const pass = Math.floor(k / rows.length);
      if (k % rows.length === 0)
        order = seededPermutation(rows.length, `blend:${seed}:${s}:${pass}`);
      blended.push(rows[order[k % rows.length]]);
    }
  }
  return Rng.create(`blend:${seed}`).shuffled(blended);
}

/**
 * The rows of one stage (0 sft, 1 reward, 2 ppo) under a data_split such as [2, 4, 4]: the
 * proportions are normalized (20/40/40 %), the rows shuffled with the seed and cut into three
 * disjoint parts that together hold every row. Equal seeds give equal parts.
 */
export function splitForStage<T>(
  rows: readonly T[],
  dataSplit: readonly number[],
  stageIndex: 0 | 1 | 2,
  seed: number,
): T[] {
  if (dataSplit.length !== 3)
    throw new Error(`data_split must have 3 entries, got ${dataSplit.length}`);
  if (dataSplit.some((x) => !(Number.isFinite(x) && x >= 0))) {
    throw new Error(
      `data_split entries must be non-negative numbers, got [${dataSplit.join(", ")}]`,
    );
  }
  const total = dataSplit.reduce((a, b) => a + b, 0);
  if (total <= 0) throw new Error("data_split must not be all zeros");
  if (![0, 1, 2].includes(stageIndex))
    throw new Error(`stage index must be 0, 1 or 2, got ${stageIndex}`);
  // Boundaries from cumulative proportions, so rounding never loses or duplicates a row.
  const bounds = [0];
  let cumulative = 0;
  for (const part of dataSplit) {
    cumulative += part;
    bounds.push(Math.round((rows.length * cumulative) / total));
  }
  const order = seededPermutation(rows.length, `split:${seed}`);
  return order.slice(bounds[stageIndex], bounds[stageIndex + 1]).map((i) => rows[i]);
}

/**
 * The items of each training step: epoch e is a seeded permutation of the items, and batches run
 * on across epochs (a batch may straddle two), so the items of a step are a pure function of
 * (seed, step) and a resumed trainer sees the batches an uninterrupted one would.
 */
export class EpochBatches<T> {
  private readonly orders = new Map<number, number[]>();

  /** seedKey names the permutations: epoch e uses `${seedKey}:${e}`. */
  constructor(
    private readonly items: readonly T[],
    private readonly batchSize: number,
    private readonly seedKey: string,
  ) {
    if (items.length === 0) throw new Error("EpochBatches needs at least one item");
  }

  at(step: number): T[] {
    const n = this.items.length;
    const picked: T[] = [];
    for (let k = step * this.batchSize; k < (step + 1) * this.batchSize; k++) {
      picked.push(this.items[this.order(Math.floor(k / n))[k % n]]);
    }
    return picked;
  }

  private order(epoch: number): number[] {
    let order = this.orders.get(epoch);
    if (!order) {
      order = seededPermutation(this.items.length, `${this.seedKey}:${epoch}`);
      if (this.orders.size > 1) this.orders.clear(); // a step needs this epoch and maybe the last
      this.orders.set(epoch, order);
    }
    return order;
  }
}

/** A prompt (a conversation for the chat template, or raw text) and the response to learn. */
export type SftExample = { prompt: ChatPrompt; response: string };

/** One example as token ids: the model reads ids[0..n-2] and predicts ids[1..n-1]. */
export type TokenizedExample = {
  ids: number[];
  /** How many leading ids are prompt; the targets from there on are trained. */
  promptLength: number;
  /** The end of the response (and its eos) was cut to fit maxSeqLen. */
  truncated: boolean;
};

/**
 * prompt + response + eos in at most maxSeqLen tokens, or null when the prompt alone leaves no
 * room for one response token. A long example loses the END of its response (as DeepSpeed-Chat's
 * tokenizer truncation does), never the start of its prompt: with learned positions, cutting the
 * prompt would train the answer at positions where serving never puts it.
 */
export function tokenizeSftExample(
  example: SftExample,
  tokenizer: Tokenizer,
  maxSeqLen: number,
): TokenizedExample | null {
  if (!Number.isInteger(maxSeqLen) || maxSeqLen < 2)
    throw new Error(`maxSeqLen must be an integer >= 2, got ${maxSeqLen}`);
  const prompt = encodePrompt(tokenizer, example.prompt);
  if (prompt.length + 1 > maxSeqLen) return null;
  const ids = [...prompt, ...tokenizer.encode(example.response), tokenizer.eosId];
  return {
    ids: ids.slice(0, maxSeqLen),
    promptLength: prompt.length,
    truncated: ids.length > maxSeqLen,
  };
}

/** Examples that fit, and how many were cut or dropped on the way. */
export type TokenizedSet<T> = { examples: T[]; truncated: number; dropped: number };

/** tokenizeSftExample over a list, counting what was cut and what did not fit at all. */
export function tokenizeSftExamples(
  examples: readonly SftExample[],
  tokenizer: Tokenizer,
  maxSeqLen: number,
): TokenizedSet<TokenizedExample> {
  const out: TokenizedExample[] = [];
  let truncated = 0;
  let dropped = 0;
  for (const example of examples) {
    const tokenized = tokenizeSftExample(example, tokenizer, maxSeqLen);
    if (!tokenized) dropped++;
    else {
      if (tokenized.truncated) truncated++;
      out.push(tokenized);
    }
  }
  return { examples: out, truncated, dropped };
}

/** Model inputs, next-token targets and a 0/1 loss mask, each [B, T] row-major. */
export type SftBatch = {
  batchSize: number;
  length: number;
  inputs: Int32Array;
  targets: Int32Array;
  /** 1 where the target is a response token (or the eos after it), 0 on prompt and padding. */
  lossMask: Float32Array;
  /** Real (non-pad) tokens the model reads. */
  tokens: number;
};

/**
 * Pads examples with padId to the longest one in the batch (T = longest - 1 positions).
 * Padding at the end never changes earlier positions under causal attention, so this trains
 * exactly as padding to maxSeqLen would, with less work.
 */
export function buildSftBatch(
  examples: readonly Omit<TokenizedExample, "truncated">[],
  padId: number,
): SftBatch {
  if (examples.length === 0) throw new Error("an SFT batch needs at least one example");
  const length = Math.max(...examples.map((e) => e.ids.length)) - 1;
  const batchSize = examples.length;
  const inputs = new Int32Array(batchSize * length).fill(padId);
  const targets = new Int32Array(batchSize * length).fill(padId);
  const lossMask = new Float32Array(batchSize * length);
  let tokens = 0;
  for (const [b, { ids, promptLength }] of examples.entries()) {
    for (let t = 0; t < ids.length - 1; t++) {
      inputs[b * length + t] = ids[t];
      targets[b * length + t] = ids[t + 1];
      // Target t is token t+1: a response token when t+1 >= promptLength.
      lossMask[b * length + t] = t + 1 >= promptLength ? 1 : 0;
    }
    tokens += ids.length - 1;
  }
  return { batchSize, length, inputs, targets, lossMask, tokens };
}

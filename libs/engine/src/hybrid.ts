// The hybrid engine (DeepSpeed-HE's idea at this project's scale): PPO's actor is ONE set of
// weights, the same tf.Variables, that switches between an inference mode for experience
// generation (no gradient tape, dropout off; on the native kernels the inference service's decode
// path: the projections packed for the decode kernels, a paged KV cache, rows leaving as they
// finish) and a training mode for the update (dropout, tape), and back. The packed copies are
// made from the weights at each switch to inference and dropped at the switch back, so the
// rollout always samples from the weights just trained. LoRA adapters are merged into their
// projections for generation and taken out again for the update (DeepSpeed-HE fuses and unfuses
// them the same way).
import type * as tf from "@tensorflow/tfjs";
import { DecodeBatch } from "./decode-batch";
import { fusedKernelsActive } from "./kernels/index.ts";
import type { GPT } from "./model";
import type { Rng } from "./rng";
import { type SampledRow, type SampleOptions, sampleTokens } from "./sampler";

export type HybridMode = "training" | "inference";

/** A rollout's answer: what PPO's experience reads of a sampled row. */
export type RolloutSample = Omit<SampledRow, "logprobs">;

export class HybridEngine {
  private current: HybridMode = "training";
  /** How often the actor switched each way (one pair per PPO step). */
  readonly switches = { toInference: 0, toTraining: 0 };

  constructor(readonly actor: GPT) {}

  get mode(): HybridMode {
    return this.current;
  }

  /**
   * Experience generation: inference mode for the duration of the rollout, then training mode
   * again. On the native kernels the rollout runs on the inference service's decode path
   * (decodeRollouts); elsewhere, or with `useCache: false`, on sampleTokens.
   */
  async generate(
    prompts: readonly (readonly number[])[],
    opts: SampleOptions,
  ): Promise<RolloutSample[]> {
    this.switchTo("inference");
    try {
      if (opts.useCache === false || !fusedKernelsActive())
        return await sampleTokens(this.actor, prompts, opts);
      return await decodeRollouts(this.actor, prompts, opts);
    } finally {
      this.switchTo("training");
    }
  }

  /**
   * The training forward (dropout on): logits [B, T, V] for the caller's tape. Also used, outside
   * a tape, for the rollout's old log-probs, so old and new log-probs come from the same function.
   */
  trainingLogits(ids: tf.Tensor2D, rng: Rng): tf.Tensor3D {
    if (this.current !== "training")
      throw new Error("the actor is generating (inference mode); it cannot train now");
    return this.actor.forward(ids, { training: true, rng });
  }

  private switchTo(mode: HybridMode): void {
    if (mode === this.current) throw new Error(`the actor is already in ${mode} mode`);
    this.current = mode;
    if (mode === "inference") {
      this.actor.mergeLora();
      this.switches.toInference++;
    } else {
      this.actor.unmergeLora();
      // The decode copies would not follow the update about to change the weights.
      this.actor.unpackDecoding();
      this.switches.toTraining++;
    }
  }
}

/**
 * sampleTokens' rollouts (the same random streams, stop tokens and finishes) on the serving
 * path: the actor's projections packed once for the decode kernels, in float32 (its own numbers),
 * each step one native call per block outside tfjs (GPT.decodeLogits), the keys and values in
 * the paged float16 cache, rows leaving as they finish.
 */
async function decodeRollouts(
  actor: GPT,
  prompts: readonly (readonly number[])[],
  opts: SampleOptions,
): Promise<RolloutSample[]> {
  if (prompts.length === 0) return [];
  const batch = new DecodeBatch(actor, { dtype: "float32" });
  try {
    const stopIds = [opts.eosId, ...(opts.endIds ?? [])];
    const rows = await batch.addPrompts(prompts, (i) => ({
      maxNewTokens: opts.maxNewTokens,
      temperature: opts.temperature,
      topP: opts.topP,
      seed: `sample:${opts.seed}:${i}`, // sampleTokens' name for row i's stream
      stopIds,
      suppressIds: [opts.padId], // padding is never an answer
    }));
    while (batch.size > 0) await batch.step();
    return rows.map((row, i) => ({
      prompt: prompts[i],
      tokens: row.tokens,
      // A stop token ends a row as sampleTokens' eos does; the rest ran out of tokens or context.
      finish: row.finish === "stop" ? "eos" : "length",
    }));
  } finally {
    batch.dispose();
  }
}

// The hybrid engine (DeepSpeed-HE's idea at this project's scale): PPO's actor is ONE set of
// weights, the same tf.Variables, that switches between an inference mode for experience
// generation (no gradient tape, dropout off, KV cache, batched sampling: the fused kernels run
// without their backward bookkeeping) and a training mode for the update (dropout, tape), and back.
// Nothing is copied at a switch, so the rollout always samples from the weights just trained.
// LoRA adapters are merged into their projections for generation and taken out again for the
// update (DeepSpeed-HE fuses and unfuses them the same way).
import type * as tf from "@tensorflow/tfjs";
import type { GPT } from "./model";
import type { Rng } from "./rng";
import { type SampledRow, type SampleOptions, sampleTokens } from "./sampler";

export type HybridMode = "training" | "inference";

export class HybridEngine {
  private current: HybridMode = "training";
  /** How often the actor switched each way (one pair per PPO step). */
  readonly switches = { toInference: 0, toTraining: 0 };

  constructor(readonly actor: GPT) {}

  get mode(): HybridMode {
    return this.current;
  }

  /** Experience generation: inference mode for the duration of the rollout, then training mode again. */
  async generate(
    prompts: readonly (readonly number[])[],
    opts: SampleOptions,
  ): Promise<SampledRow[]> {
    this.switchTo("inference");
    try {
      return await sampleTokens(this.actor, prompts, opts);
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
      this.switches.toTraining++;
    }
  }
}

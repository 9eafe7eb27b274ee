// A value model: a GPT body with a scalar head (DeepSpeed-Chat's RewardModel: the transformer
// plus `v_head = Linear(d_model, 1, bias=False)`). As the reward model it scores a whole
// sequence by the value at its last real token; as PPO's critic it gives a value at every token.
import * as tf from "@tensorflow/tfjs";
import type { ModelConfig } from "./config";
import { type ForwardOptions, GPT } from "./model";
import { Rng } from "./rng";

/** Hugging Face name of the value head (nn.Linear layout [out = 1, in = C]). */
export const V_HEAD = "v_head.weight";

export class ValueModel {
  readonly body: GPT;
  readonly vHead: tf.Variable<tf.Rank.R2>; // [1, C]

  /** Takes ownership of `body`; a fresh head is drawn from `seed` unless `head` is given. */
  constructor(body: GPT, seed = 0, head?: tf.Tensor2D) {
    this.body = body;
    const c = body.config.dModel;
    if (head && !tf.util.arraysEqual(head.shape, [1, c])) {
      throw new Error(`${V_HEAD} has shape [${head.shape}], the model expects [1,${c}]`);
    }
    this.vHead = tf.tidy(() =>
      tf.variable(
        head ??
          tf.randomNormal([1, c], 0, 0.02, "float32", Rng.create(`v-head:${seed}`).nextUint32()),
        true,
      ),
    ) as tf.Variable<tf.Rank.R2>;
  }

  static fresh(config: ModelConfig, seed = 0): ValueModel {
    return new ValueModel(new GPT(config, seed), seed);
  }

  get config(): ModelConfig {
    return this.body.config;
  }

  /** ids: [B, T] int32 -> a value per position [B, T]. */
  values(ids: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor2D {
    return tf.tidy(() => {
      const [batch, time] = ids.shape;
      const h = this.body.hidden(ids, opts).reshape([batch * time, this.config.dModel]); // [B*T, C]
      return tf.matMul(h, this.vHead, false, true).reshape([batch, time]) as tf.Tensor2D;
    });
  }

  /**
   * One score per sequence: the value at its last real token. ids: [B, T] right-padded,
   * lastIndex[b] = index of row b's last real token -> [B].
   */
  scores(ids: tf.Tensor2D, lastIndex: readonly number[], opts: ForwardOptions = {}): tf.Tensor1D {
    return tf.tidy(() => {
      const [batch, time] = ids.shape;
      const flat = this.values(ids, opts).reshape([batch * time]);
      const at = tf.tensor1d(
        lastIndex.map((t, b) => b * time + t),
        "int32",
      );
      return tf.gather(flat, at) as tf.Tensor1D;
    });
  }

  /**
   * The weights a value model trains and saves: the body's (without an untied LM head, which a
   * value model never uses) and v_head.weight. The variables stay owned by the model.
   */
  namedWeights(): Map<string, tf.Variable> {
    const weights = this.body.namedWeights();
    weights.delete("lm_head.weight");
    weights.set(V_HEAD, this.vHead);
    return weights;
  }

  parameterCount(): number {
    let total = 0;
    for (const w of this.namedWeights().values()) total += w.size;
    return total;
  }

  dispose(): void {
    this.body.dispose();
    this.vHead.dispose();
  }
}

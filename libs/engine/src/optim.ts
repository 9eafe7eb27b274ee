// AdamW with decoupled weight decay (Loshchilov & Hutter; torch.optim.AdamW's arithmetic),
// a linear-warmup + cosine learning-rate schedule, and global-norm gradient clipping.
import * as tf from "@tensorflow/tfjs";
import { adamwUpdate } from "./ops";

export type AdamWConfig = {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Decay embedding tables too (nanoGPT and DeepSpeed-Chat do; minGPT does not). */
  decayEmbeddings: boolean;
};

export const ADAMW_DEFAULTS: AdamWConfig = {
  beta1: 0.9,
  beta2: 0.95, // nanoGPT / GPT-3: steadier than 0.999 for small batches
  eps: 1e-8,
  weightDecay: 0.01,
  decayEmbeddings: true,
};

/**
 * Which weights are decayed: matrices that multiply activations (and embeddings when
 * configured). Biases and norm gains are not: shrinking them towards 0 has no regularizing
 * meaning. Decided by the tensor's rank and Hugging Face name.
 */
export function isDecayed(
  name: string,
  shape: readonly number[],
  decayEmbeddings: boolean,
): boolean {
  if (shape.length < 2) return false;
  if (name === "wte.weight" || name === "wpe.weight") return decayEmbeddings;
  return true;
}

export type AdamWGroups = {
  decay: { tensors: number; parameters: number };
  noDecay: { tensors: number; parameters: number };
};

/** Moments and step of AdamW; the moment tensors belong to the optimizer. */
export class AdamW {
  readonly config: AdamWConfig;
  /** Optimizer steps taken (bias correction uses step + 1 for the next one). */
  step = 0;
  private readonly params: Map<string, tf.Variable>;
  private readonly decayed = new Set<string>();
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();

  constructor(params: Map<string, tf.Variable>, config: Partial<AdamWConfig> = {}) {
    this.config = { ...ADAMW_DEFAULTS, ...config };
    this.params = new Map(params);
    for (const [name, p] of this.params) {
      if (isDecayed(name, p.shape, this.config.decayEmbeddings)) this.decayed.add(name);
      // Inside tidy the zeros are released and only the variables (which tidy leaves alone) stay.
      this.m.set(
        name,
        tf.tidy(() => tf.variable(tf.zerosLike(p), false)),
      );
      this.v.set(
        name,
        tf.tidy(() => tf.variable(tf.zerosLike(p), false)),
      );
    }
  }

  /** Tensor and parameter counts of the decayed and non-decayed groups (nanoGPT prints these). */
  groups(): AdamWGroups {
    const groups: AdamWGroups = {
      decay: { tensors: 0, parameters: 0 },
      noDecay: { tensors: 0, parameters: 0 },
    };
    for (const [name, p] of this.params) {
      const group = this.decayed.has(name) ? groups.decay : groups.noDecay;
      group.tensors += 1;
      group.parameters += p.size;
    }
    return groups;
  }

  /**
   * One update with learning rate `lr` (or `lrOf(name)` per parameter: LoRA adapters have their
   * own); `grads` maps parameter names to gradients.
   * p <- p * (1 - lr * wd) - lr * mHat / (sqrt(vHat) + eps), mHat, vHat bias-corrected.
   */
  apply(grads: Map<string, tf.Tensor>, lr: number, lrOf?: (name: string) => number): void {
    const { beta1, beta2, eps, weightDecay } = this.config;
    const t = this.step + 1;
    tf.tidy(() => {
      for (const [name, p] of this.params) {
        const g = grads.get(name);
        if (!g) throw new Error(`AdamW: no gradient for ${name}`);
        const m = this.m.get(name) as tf.Variable;
        const v = this.v.get(name) as tf.Variable;
        const decay = this.decayed.has(name) ? weightDecay : 0;
        const [p2, m2, v2] = adamwUpdate(p, m, v, g, {
          lr: lrOf ? lrOf(name) : lr,
          beta1,
          beta2,
          eps,
          weightDecay: decay,
          step: t,
        });
        m.assign(m2);
        v.assign(v2);
        p.assign(p2);
      }
    });
    this.step = t;
  }

  /** Moments under torch's names: exp_avg.<param>, exp_avg_sq.<param>. Owned by the optimizer. */
  stateTensors(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>();
    for (const [name, m] of this.m) out.set(`exp_avg.${name}`, m);
    for (const [name, v] of this.v) out.set(`exp_avg_sq.${name}`, v);
    return out;
  }

  /** Restores moments (as exported by stateTensors) and the step count. */
  loadState(tensors: Map<string, tf.Tensor>, step: number): void {
    if (!Number.isInteger(step) || step < 0)
      throw new Error(`optimizer step must be a non-negative integer, got ${step}`);
    for (const [name, target] of this.stateTensors()) {
      const value = tensors.get(name);
      if (!value) throw new Error(`optimizer state is missing ${name}`);
      if (!tf.util.arraysEqual(value.shape, target.shape)) {
        throw new Error(
          `optimizer state ${name} has shape [${value.shape}], expected [${target.shape}]`,
        );
      }
      target.assign(value);
    }
    this.step = step;
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
    this.m.clear();
    this.v.clear();
  }
}

export type LrSchedule = {
  peak: number;
  warmupSteps: number;
  totalSteps: number;
  /** Floor of the cosine as a fraction of peak (nanoGPT decays to peak / 10). */
  minRatio: number;
};

/**
 * Learning rate of 0-based `step`: linear warmup over warmupSteps reaching peak at the last
 * warmup step, then a cosine from peak down to peak * minRatio at totalSteps.
 */
export function lrAt(
  step: number,
  { peak, warmupSteps, totalSteps, minRatio }: LrSchedule,
): number {
  if (step < warmupSteps) return (peak * (step + 1)) / warmupSteps;
  const decaySteps = Math.max(1, totalSteps - warmupSteps);
  const progress = Math.min(1, (step - warmupSteps) / decaySteps);
  const min = peak * minRatio;
  return min + 0.5 * (1 + Math.cos(Math.PI * progress)) * (peak - min);
}

/**
 * Scales gradients so their global L2 norm is at most maxNorm (torch's clip_grad_norm_:
 * factor maxNorm / (norm + 1e-6) when larger). maxNorm <= 0 disables clipping.
 * Returns new tensors and the norm before clipping as a scalar tensor; the caller owns (and
 * must dispose) all of them, even inside its own tf.tidy, which does not release kept tensors.
 */
export function clipByGlobalNorm(
  grads: Map<string, tf.Tensor>,
  maxNorm: number,
): { grads: Map<string, tf.Tensor>; norm: tf.Scalar } {
  let norm: tf.Scalar | undefined;
  const clipped = new Map<string, tf.Tensor>();
  tf.tidy(() => {
    const squares = [...grads.values()].map((g) => tf.sum(tf.square(g)));
    norm = tf.keep(tf.sqrt(tf.addN(squares)) as tf.Scalar);
    if (maxNorm > 0) {
      const factor = tf.minimum(1, tf.div(maxNorm, tf.add(norm, 1e-6)));
      for (const [name, g] of grads) clipped.set(name, tf.mul(g, factor));
    } else {
      for (const [name, g] of grads) clipped.set(name, g.clone());
    }
    for (const g of clipped.values()) tf.keep(g);
  });
  return { grads: clipped, norm: norm as tf.Scalar };
}

// The RLHF math as pure functions, each read like a line of a paper's algorithm box.
// Tensor losses (for gradients) take [N] or [B, T] tensors and a 0/1 mask of the same shape;
// rollout-side estimators (rewards, GAE, whitening) work on plain arrays of one row's actions.
import * as tf from "@tensorflow/tfjs";

/** sum(x * mask) / max(1, sum(mask)). */
export function maskedMean(x: tf.Tensor, mask: tf.Tensor): tf.Scalar {
  return tf.tidy(() => tf.div(tf.sum(tf.mul(x, mask)), tf.maximum(tf.sum(mask), 1)) as tf.Scalar);
}

/** Reward model (InstructGPT eq. 1): mean of -log sigmoid(r_chosen - r_rejected). chosen, rejected: [B]. */
export function pairwiseRewardLoss(chosen: tf.Tensor1D, rejected: tf.Tensor1D): tf.Scalar {
  // -log sigmoid(d) = softplus(-d), which stays finite for large |d|.
  return tf.tidy(() => tf.mean(tf.softplus(tf.sub(rejected, chosen))) as tf.Scalar);
}

/**
 * PPO's clipped surrogate (actor loss): max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)),
 * masked mean, with ratio = exp(logp - oldLogp). Also returns the share of masked tokens whose
 * ratio was clipped (clip fraction), as a tensor the caller owns.
 */
export function clippedSurrogateLoss(
  logp: tf.Tensor,
  oldLogp: tf.Tensor,
  advantages: tf.Tensor,
  mask: tf.Tensor,
  cliprange: number,
): { loss: tf.Scalar; clipFraction: tf.Scalar } {
  return tf.tidy(() => {
    const ratio = tf.exp(tf.sub(logp, oldLogp));
    const unclipped = tf.mul(tf.neg(advantages), ratio);
    const clipped = tf.mul(tf.neg(advantages), tf.clipByValue(ratio, 1 - cliprange, 1 + cliprange));
    const loss = maskedMean(tf.maximum(unclipped, clipped), mask);
    const clipFraction = maskedMean(tf.cast(tf.greater(clipped, unclipped), "float32"), mask);
    return { loss, clipFraction };
  });
}

/**
 * PPO's clipped value loss (critic): 0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2),
 * masked mean.
 */
export function clippedValueLoss(
  values: tf.Tensor,
  oldValues: tf.Tensor,
  returns: tf.Tensor,
  mask: tf.Tensor,
  cliprangeValue: number,
): tf.Scalar {
  return tf.tidy(() => {
    const clippedValues = tf
      .clipByValue(tf.sub(values, oldValues), -cliprangeValue, cliprangeValue)
      .add(oldValues);
    const unclipped = tf.square(tf.sub(values, returns));
    const clipped = tf.square(tf.sub(clippedValues, returns));
    return tf.mul(0.5, maskedMean(tf.maximum(unclipped, clipped), mask)) as tf.Scalar;
  });
}

/**
 * Per-token rewards of one answer (DeepSpeed-Chat's compute_rewards): a KL penalty
 * -klCtl * (logp - refLogp) at every token, plus the reward model's score clipped to
 * +-clipRewardValue at the last token.
 */
export function tokenRewards(
  logp: readonly number[],
  refLogp: readonly number[],
  score: number,
  klCtl: number,
  clipRewardValue: number,
): number[] {
  const rewards = logp.map((lp, t) => -klCtl * (lp - refLogp[t]));
  if (rewards.length > 0) {
    rewards[rewards.length - 1] += Math.max(-clipRewardValue, Math.min(clipRewardValue, score));
  }
  return rewards;
}

/**
 * Generalized advantage estimation over one answer's tokens, backwards from its end (the state
 * after the last token is terminal, value 0): delta_t = r_t + gamma V_{t+1} - V_t,
 * A_t = delta_t + gamma lam A_{t+1}; returns R_t = A_t + V_t.
 */
export function gae(
  rewards: readonly number[],
  values: readonly number[],
  gamma: number,
  lam: number,
): { advantages: number[]; returns: number[] } {
  const n = rewards.length;
  const advantages = new Array<number>(n);
  let next = 0;
  for (let t = n - 1; t >= 0; t--) {
    const nextValue = t + 1 < n ? values[t + 1] : 0;
    const delta = rewards[t] + gamma * nextValue - values[t];
    next = delta + gamma * lam * next;
    advantages[t] = next;
  }
  return { advantages, returns: advantages.map((a, t) => a + values[t]) };
}

/** (x - mean) / (std + 1e-8) over all values of all rows (population std). */
export function whiten(rows: readonly (readonly number[])[]): number[][] {
  const all = rows.flat();
  if (all.length === 0) return rows.map(() => []);
  const mean = all.reduce((a, b) => a + b, 0) / all.length;
  const variance = all.reduce((a, b) => a + (b - mean) ** 2, 0) / all.length;
  const std = Math.sqrt(variance);
  return rows.map((row) => row.map((x) => (x - mean) / (std + 1e-8)));
}

/**
 * Adaptive KL coefficient (Ziegler et al. 2019, as TRL's AdaptiveKLController): move kl_ctl
 * so the observed KL approaches `target`, by at most 20% of the error per `horizon` samples.
 */
export function adaptKlCoefficient(
  klCtl: number,
  observedKl: number,
  samples: number,
  { target, horizon }: { target: number; horizon: number },
): number {
  const error = Math.max(-0.2, Math.min(0.2, observedKl / target - 1));
  return klCtl * (1 + (error * samples) / horizon);
}

// PPO's experience making (DeepSpeed-Chat's generate_experience): the actor answers a batch of
// prompts in inference mode, then, without a tape, the actor (old log-probs), the frozen reference
// (its log-probs for the KL penalty), the critic (values) and the frozen reward model (one score
// per answer) read the prompt + answer sequences; per-token rewards, GAE advantages and returns
// follow. Everything is laid out on a [B, T] grid where position t scores token t + 1.
import { performance } from "node:perf_hooks";
import * as tf from "@tensorflow/tfjs";
import type { HybridEngine } from "./hybrid";
import { gae, tokenRewards, whiten } from "./losses";
import type { GPT } from "./model";
import { crossEntropy } from "./ops";
import type { Rng } from "./rng";
import type { SampleOptions } from "./sampler";
import type { ValueModel } from "./value-model";

export type ExperienceModels = {
  hybrid: HybridEngine;
  reference: GPT;
  critic: ValueModel;
  reward: ValueModel;
};

export type ExperienceSettings = {
  sample: SampleOptions;
  klCtl: number;
  clipRewardValue: number;
  gamma: number;
  lam: number;
  /** Dropout seeds of the actor's training forward (old log-probs). */
  rng: Rng;
};

/** One rollout, ready for PPO's update. Grids are [B, T] row-major. */
export type Rollout = {
  batch: number;
  length: number;
  /** prompt + answer, right-padded. */
  ids: Int32Array;
  /** ids shifted left: the token position t predicts (pad at the end). */
  targets: Int32Array;
  /** 1 where position t predicts an answer token (an action), else 0. */
  mask: Float32Array;
  oldLogp: Float32Array;
  oldValues: Float32Array;
  advantages: Float32Array;
  returns: Float32Array;
  /** Tokens read and written: every prompt and answer token. */
  tokens: number;
  /** The answers as token ids (eos included when sampled). */
  answers: number[][];
  stats: {
    /** Mean reward-model score of the answers (before clipping). */
    rewardScore: number;
    /** Mean over answers of sum_t (logp - refLogp): the sampled KL to the reference. */
    kl: number;
    answerLength: number;
    /** Mean per-token entropy of the actor's distribution over its answers. */
    entropy: number;
    valueMean: number;
    returnMean: number;
  };
  /** Seconds: generation (actor sampling) and scoring (the four reads). */
  seconds: { generation: number; scoring: number };
};

/** Per-position log p(target) from logits [B, T, V] and targets [B*T] -> [B, T]. */
export function tokenLogprobs(logits: tf.Tensor3D, targets: Int32Array): tf.Tensor2D {
  return tf.tidy(() => {
    const [b, t, v] = logits.shape;
    const nll = crossEntropy(
      logits.reshape([b * t, v]) as tf.Tensor2D,
      tf.tensor1d(targets, "int32"),
    );
    return tf.neg(nll).reshape([b, t]) as tf.Tensor2D;
  });
}

export async function makeExperience(
  models: ExperienceModels,
  prompts: readonly (readonly number[])[],
  settings: ExperienceSettings,
): Promise<Rollout> {
  const t0 = performance.now();
  const sampled = await models.hybrid.generate(prompts, settings.sample);
  const t1 = performance.now();

  // Re-pack each row as prompt + answer from position 0, right-padded: the training forward
  // then needs no left padding, and positions match what serving uses.
  const { padId } = settings.sample;
  const batch = sampled.length;
  const length = Math.max(...sampled.map((r) => r.prompt.length + r.tokens.length));
  const ids = new Int32Array(batch * length).fill(padId);
  const targets = new Int32Array(batch * length).fill(padId);
  const mask = new Float32Array(batch * length);
  const lastIndex: number[] = [];
  let tokens = 0;
  for (const [b, row] of sampled.entries()) {
    const seq = [...row.prompt, ...row.tokens];
    seq.forEach((id, t) => {
      ids[b * length + t] = id;
      if (t > 0) targets[b * length + t - 1] = id;
    });
    for (let j = 0; j < row.tokens.length; j++) mask[b * length + row.prompt.length - 1 + j] = 1;
    lastIndex.push(seq.length - 1);
    tokens += seq.length;
  }

  // The four reads, no tape: [B, T] grids and one score per answer.
  const [logpT, refT, entropyT, valuesT, scoresT] = tf.tidy(() => {
    const input = tf.tensor2d(ids, [batch, length], "int32");
    const actorLogits = models.hybrid.trainingLogits(input, settings.rng);
    const logp = tokenLogprobs(actorLogits, targets);
    const logSoftmax = tf.logSoftmax(actorLogits);
    const entropy = tf.neg(tf.sum(tf.mul(tf.exp(logSoftmax), logSoftmax), -1)); // [B, T]
    const ref = tokenLogprobs(models.reference.forward(input), targets);
    const values = models.critic.values(input);
    const scores = models.reward.scores(input, lastIndex);
    return [logp, ref, entropy, values, scores];
  });
  const [logpAll, refAll, entropyAll, valuesAll, scores] = (await Promise.all(
    [logpT, refT, entropyT, valuesT, scoresT].map((t) => t.data()),
  )) as Float32Array[];
  tf.dispose([logpT, refT, entropyT, valuesT, scoresT]);

  // Rewards, GAE and whitening per answer, on its actions only.
  const rowActions = (grid: Float32Array, b: number): number[] => {
    const start = b * length + sampled[b].prompt.length - 1;
    return Array.from(grid.subarray(start, start + sampled[b].tokens.length));
  };
  const advantageRows: number[][] = [];
  const returnRows: number[][] = [];
  let kl = 0;
  let entropy = 0;
  for (let b = 0; b < batch; b++) {
    const logp = rowActions(logpAll, b);
    const ref = rowActions(refAll, b);
    const values = rowActions(valuesAll, b);
    kl += logp.reduce((sum, lp, t) => sum + lp - ref[t], 0);
    entropy += rowActions(entropyAll, b).reduce((a, x) => a + x, 0);
    const rewards = tokenRewards(logp, ref, scores[b], settings.klCtl, settings.clipRewardValue);
    const { advantages, returns } = gae(rewards, values, settings.gamma, settings.lam);
    advantageRows.push(advantages);
    returnRows.push(returns);
  }
  const whitened = whiten(advantageRows);
  const advantages = new Float32Array(batch * length);
  const returns = new Float32Array(batch * length);
  for (let b = 0; b < batch; b++) {
    const start = b * length + sampled[b].prompt.length - 1;
    advantages.set(whitened[b], start);
    returns.set(returnRows[b], start);
  }
  const actions = sampled.reduce((n, r) => n + r.tokens.length, 0);
  const masked = (grid: Float32Array) => grid.reduce((s, x, i) => s + x * mask[i], 0) / actions;
  const t2 = performance.now();
  return {
    batch,
    length,
    ids,
    targets,
    mask,
    oldLogp: logpAll,
    oldValues: valuesAll,
    advantages,
    returns,
    tokens,
    answers: sampled.map((r) => r.tokens),
    stats: {
      rewardScore: scores.reduce((a, b) => a + b, 0) / batch,
      kl: kl / batch,
      answerLength: actions / batch,
      entropy: entropy / actions,
      valueMean: masked(valuesAll),
      returnMean: masked(returns),
    },
    seconds: { generation: (t1 - t0) / 1000, scoring: (t2 - t1) / 1000 },
  };
}

// The RLHF estimators and losses against numbers worked by hand in the comments.
import { beforeAll, describe, expect, it } from "vitest";
import {
  adaptKlCoefficient,
  clippedSurrogateLoss,
  clippedValueLoss,
  gae,
  pairwiseRewardLoss,
  tf,
  tokenRewards,
  whiten,
} from "../src/index";
import { useTestBackend } from "./support";

beforeAll(async () => {
  await useTestBackend();
});

const value = (t: tf.Tensor) => t.dataSync()[0];

describe("the pairwise reward loss", () => {
  it("is the mean of -log sigmoid(chosen - rejected)", () => {
    // -log s(2) = log(1 + e^-2) = 0.126928; -log s(-1) = log(1 + e) = 1.313262; mean 0.720095.
    const loss = pairwiseRewardLoss(tf.tensor1d([2, 0]), tf.tensor1d([0, 1]));
    expect(value(loss)).toBeCloseTo(0.720095, 5);
  });

  it("stays finite when the scores are far apart", () => {
    expect(value(pairwiseRewardLoss(tf.tensor1d([-100]), tf.tensor1d([100])))).toBeCloseTo(200, 3);
    expect(value(pairwiseRewardLoss(tf.tensor1d([100]), tf.tensor1d([-100])))).toBeCloseTo(0, 6);
  });
});

describe("per-token rewards", () => {
  it("are a KL penalty at every token with the clipped score added at the last", () => {
    // -0.1 * (logp - ref): -0.1 * 0.5, 0, -0.1 * 0.5; the score 7 clips to 5 at the end.
    const rewards = tokenRewards([-1, -2, -0.5], [-1.5, -2, -1], 7, 0.1, 5);
    expect(rewards[0]).toBeCloseTo(-0.05, 10);
    expect(rewards[1]).toBeCloseTo(0, 10);
    expect(rewards[2]).toBeCloseTo(4.95, 10);
    expect(tokenRewards([0], [0], -9, 0.1, 5)).toEqual([-5]);
  });
});

describe("generalized advantage estimation", () => {
  it("runs backwards from a terminal state of value 0", () => {
    // gamma 1, lam 0.95, rewards [0, 0, 1], values [0.5, 0.6, 0.7]:
    // A2 = 1 - 0.7 = 0.3; A1 = (0.7 - 0.6) + 0.95 * 0.3 = 0.385; A0 = (0.6 - 0.5) + 0.95 * 0.385 = 0.46575
    const { advantages, returns } = gae([0, 0, 1], [0.5, 0.6, 0.7], 1, 0.95);
    expect(advantages.map((a) => Number(a.toFixed(6)))).toEqual([0.46575, 0.385, 0.3]);
    expect(returns.map((r) => Number(r.toFixed(6)))).toEqual([0.96575, 0.985, 1]);
  });

  it("discounts by gamma and lam", () => {
    // gamma 0.9, lam 0.5: A2 = 0.3; A1 = 0.9 * 0.7 - 0.6 + 0.45 * 0.3 = 0.165;
    // A0 = 0.9 * 0.6 - 0.5 + 0.45 * 0.165 = 0.11425
    const { advantages } = gae([0, 0, 1], [0.5, 0.6, 0.7], 0.9, 0.5);
    expect(advantages.map((a) => Number(a.toFixed(6)))).toEqual([0.11425, 0.165, 0.3]);
  });

  it("whitens advantages over every token of every answer", () => {
    // mean 2, population std sqrt(2/3) = 0.816497
    const [a, b] = whiten([[1, 2], [3]]);
    expect(a[0]).toBeCloseTo(-1.224745, 5);
    expect(a[1]).toBeCloseTo(0, 6);
    expect(b[0]).toBeCloseTo(1.224745, 5);
  });
});

describe("PPO's clipped losses", () => {
  it("clips the surrogate's ratio to 1 +- cliprange and reports the clipped share", () => {
    // ratios 1, 1.5, 0.5; advantages 1, 1, -1; cliprange 0.2:
    // max(-1, -1) = -1; max(-1.5, -1.2) = -1.2 (clipped); max(0.5, 0.8) = 0.8 (clipped)
    const logp = tf.tensor1d([0, Math.log(1.5), Math.log(0.5)]);
    const old = tf.zeros([3]);
    const adv = tf.tensor1d([1, 1, -1]);
    const all = clippedSurrogateLoss(logp, old, adv, tf.ones([3]), 0.2);
    expect(value(all.loss)).toBeCloseTo((-1 - 1.2 + 0.8) / 3, 5);
    expect(value(all.clipFraction)).toBeCloseTo(2 / 3, 5);
    const masked = clippedSurrogateLoss(logp, old, adv, tf.tensor1d([1, 1, 0]), 0.2);
    expect(value(masked.loss)).toBeCloseTo(-1.1, 5);
    expect(value(masked.clipFraction)).toBeCloseTo(0.5, 5);
  });

  it("takes the worse of the clipped and unclipped value errors", () => {
    // row 0: (1 - 2)^2 = 1 vs (0.5 + 0.2 - 2)^2 = 1.69; row 1: (2 - 1)^2 = 1 both; 0.5 * mean = 0.6725
    const loss = clippedValueLoss(
      tf.tensor1d([1, 2]),
      tf.tensor1d([0.5, 2]),
      tf.tensor1d([2, 1]),
      tf.ones([2]),
      0.2,
    );
    expect(value(loss)).toBeCloseTo(0.6725, 5);
  });

  it("gives the surrogate's gradient that finite differences give", () => {
    const old = tf.tensor1d([0.1, -0.2, 0.3, 0]);
    const adv = tf.tensor1d([0.7, -1.2, 0.4, 2]);
    const mask = tf.tensor1d([1, 1, 1, 0]);
    const at = [0.15, -0.05, 0.2, 0.5]; // ratios inside and outside the clip range
    const f = (x: tf.Tensor) => clippedSurrogateLoss(x, old, adv, mask, 0.2).loss;
    const grad = tf.grad(f)(tf.tensor1d(at)).arraySync() as number[];
    const h = 1e-3;
    at.forEach((_, i) => {
      const up = [...at];
      const down = [...at];
      up[i] += h;
      down[i] -= h;
      const numeric = (value(f(tf.tensor1d(up))) - value(f(tf.tensor1d(down)))) / (2 * h);
      expect(grad[i], `d loss / d logp[${i}]`).toBeCloseTo(numeric, 3);
    });
  });
});

describe("the clipped value loss's gradient", () => {
  it("is what finite differences give, zero where the clipped error is the larger one", () => {
    const old = tf.tensor1d([0.5, 2, -1, 0]);
    const returns = tf.tensor1d([2, 1, -0.5, 3]);
    const mask = tf.tensor1d([1, 1, 1, 0]);
    const at = [1.0, 2.1, -1.5, 0.2];
    const f = (x: tf.Tensor) => clippedValueLoss(x, old, returns, mask, 0.2);
    const grad = tf.grad(f)(tf.tensor1d(at)).arraySync() as number[];
    const h = 1e-3;
    at.forEach((_, i) => {
      const up = [...at];
      const down = [...at];
      up[i] += h;
      down[i] -= h;
      const numeric = (value(f(tf.tensor1d(up))) - value(f(tf.tensor1d(down)))) / (2 * h);
      expect(grad[i], `d loss / d V[${i}]`).toBeCloseTo(numeric, 3);
    });
    // Row 0: the clipped value 0.7 is further from 2 than 1.0 is, so the loss is flat in V there.
    expect(grad[0]).toBeCloseTo(0, 6);
  });
});

describe("the adaptive KL controller", () => {
  it("raises kl_ctl by at most 20% of the error per horizon when the KL is above target", () => {
    // error clip(12 / 6 - 1, +-0.2) = 0.2; 0.1 * (1 + 0.2 * 16 / 10000) = 0.100032
    expect(adaptKlCoefficient(0.1, 12, 16, { target: 6, horizon: 10000 })).toBeCloseTo(0.100032, 9);
    expect(adaptKlCoefficient(0.1, 3, 16, { target: 6, horizon: 16 })).toBeCloseTo(0.08, 9);
  });
});

import { beforeAll, describe, expect, it } from "vitest";
import { AdamW, clipByGlobalNorm, GPT, isDecayed, lrAt, MODEL_PRESETS, tf } from "../src/index";
import { useTestBackend } from "./support";

beforeAll(async () => {
  await useTestBackend();
});

const close = (actual: ArrayLike<number>, expected: number[], digits = 5) => {
  expect(actual.length).toBe(expected.length);
  for (const [i, e] of expected.entries()) expect(actual[i]).toBeCloseTo(e, digits);
};

describe("AdamW", () => {
  it("matches hand-computed updates, decaying the matrix but not the bias", () => {
    const weight = tf.variable(tf.tensor2d([[1, -2]]));
    const bias = tf.variable(tf.tensor1d([0.5, 0.5]));
    const params = new Map<string, tf.Variable>([
      ["h.0.mlp.c_fc.weight", weight],
      ["h.0.mlp.c_fc.bias", bias],
    ]);
    const opt = new AdamW(params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
    const grads = new Map<string, tf.Tensor>([
      ["h.0.mlp.c_fc.weight", tf.tensor2d([[0.1, -0.2]])],
      ["h.0.mlp.c_fc.bias", tf.tensor1d([1, 1])],
    ]);

    // Step 1: m = 0.1 g, v = 0.05 g^2; bias-corrected mHat = g, vHat = g^2, so the update is sign(g).
    // weight: [1, -2] * (1 - 0.1 * 0.1) - 0.1 * [1, -1] = [0.89, -1.88]; bias (no decay): 0.5 - 0.1 = 0.4.
    opt.apply(grads, 0.1);
    close(weight.dataSync(), [0.89, -1.88]);
    close(bias.dataSync(), [0.4, 0.4]);
    const state = opt.stateTensors();
    close(state.get("exp_avg.h.0.mlp.c_fc.weight")?.dataSync() ?? [], [0.01, -0.02], 7);
    close(state.get("exp_avg_sq.h.0.mlp.c_fc.weight")?.dataSync() ?? [], [0.0005, 0.002], 7);
    expect(opt.step).toBe(1);

    // Step 2, same gradients: m = 0.9 * 0.1 g + 0.1 g = 0.19 g over a correction of 1 - 0.9^2 = 0.19,
    // so mHat is g again (and vHat g^2): the update is sign(g) once more.
    // weight: [0.89, -1.88] * 0.99 - 0.1 * [1, -1] = [0.7811, -1.7612]; bias: 0.4 - 0.1 = 0.3.
    opt.apply(grads, 0.1);
    close(weight.dataSync(), [0.7811, -1.7612]);
    close(bias.dataSync(), [0.3, 0.3]);
    expect(opt.step).toBe(2);

    for (const t of [weight, bias, ...grads.values()]) t.dispose();
    opt.dispose();
  });

  it("decays matrices and embeddings but not biases or norm gains, and counts both groups", () => {
    expect(isDecayed("h.0.attn.c_attn.weight", [64, 192], true)).toBe(true);
    expect(isDecayed("h.0.attn.c_attn.bias", [192], true)).toBe(false);
    expect(isDecayed("h.0.ln_1.weight", [64], true)).toBe(false);
    expect(isDecayed("wte.weight", [258, 64], true)).toBe(true);
    expect(isDecayed("wte.weight", [258, 64], false)).toBe(false);

    const model = new GPT(MODEL_PRESETS.tiny, 1);
    const opt = new AdamW(model.namedWeights());
    const { decay, noDecay } = opt.groups();
    // Per layer: c_attn, attn c_proj, c_fc, mlp c_proj; plus wte and wpe.
    expect(decay.tensors).toBe(2 * 4 + 2);
    // Per layer: 4 biases and 2 norms of weight + bias; plus ln_f weight and bias.
    expect(noDecay.tensors).toBe(2 * 8 + 2);
    expect(decay.parameters + noDecay.parameters).toBe(model.parameterCount());
    opt.dispose();
    model.dispose();
  });
});

describe("learning-rate schedule", () => {
  const schedule = { peak: 1, warmupSteps: 2, totalSteps: 6, minRatio: 0.1 };

  it("warms up linearly, then follows a cosine down to the floor", () => {
    expect(lrAt(0, schedule)).toBeCloseTo(0.5, 10);
    expect(lrAt(1, schedule)).toBeCloseTo(1, 10);
    expect(lrAt(2, schedule)).toBeCloseTo(1, 10); // cosine at progress 0
    // progress 1/4: 0.1 + 0.5 * (1 + cos(pi / 4)) * 0.9
    expect(lrAt(3, schedule)).toBeCloseTo(0.1 + 0.45 * (1 + Math.SQRT1_2), 10);
    expect(lrAt(4, schedule)).toBeCloseTo(0.55, 10); // progress 1/2
    expect(lrAt(6, schedule)).toBeCloseTo(0.1, 10);
    expect(lrAt(100, schedule)).toBeCloseTo(0.1, 10);
  });

  it("starts at the peak when there is no warmup", () => {
    expect(lrAt(0, { ...schedule, warmupSteps: 0 })).toBeCloseTo(1, 10);
  });
});

describe("global-norm gradient clipping", () => {
  const grads = () =>
    new Map<string, tf.Tensor>([
      ["a", tf.tensor1d([3])],
      ["b", tf.tensor2d([[4]])],
    ]);

  it("scales all gradients together to the limit and reports the norm before clipping", () => {
    const input = grads();
    const { grads: clipped, norm } = clipByGlobalNorm(input, 1);
    expect(norm.dataSync()[0]).toBeCloseTo(5, 6);
    close(clipped.get("a")?.dataSync() ?? [], [0.6]);
    close(clipped.get("b")?.dataSync() ?? [], [0.8]);
    for (const t of [...input.values(), ...clipped.values(), norm]) t.dispose();
  });

  it("leaves gradients under the limit, or with clipping disabled, unchanged", () => {
    for (const limit of [10, 0]) {
      const input = grads();
      const { grads: clipped, norm } = clipByGlobalNorm(input, limit);
      close(clipped.get("a")?.dataSync() ?? [], [3]);
      close(clipped.get("b")?.dataSync() ?? [], [4]);
      for (const t of [...input.values(), ...clipped.values(), norm]) t.dispose();
    }
  });
});

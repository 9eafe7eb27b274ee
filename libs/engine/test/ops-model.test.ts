// The whole GPT on the fused native kernels against the same GPT on plain tfjs ops: same
// weights, same batch, same loss and gradients within float32 tolerance.
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { installFastKernels, setFastKernelsEnabled } from "../src/kernels/index.ts";
import { crossEntropy } from "../src/ops.ts";
import { GPT, initBackend, KVCache, MODEL_PRESETS, type ModelConfig, tf } from "../src/index";

beforeAll(async () => {
  await initBackend("wasm");
});

afterEach(() => setFastKernelsEnabled(true));

const B = 3;
const T = 24;

function batch(vocab: number) {
  const ids = Array.from({ length: B * (T + 1) }, (_, i) => (i * 37 + 11) % vocab);
  const rows = Array.from({ length: B }, (_, b) => ids.slice(b * (T + 1), (b + 1) * (T + 1)));
  return {
    inputs: tf.tensor2d(
      rows.map((r) => r.slice(0, T)),
      [B, T],
      "int32",
    ),
    targets: tf.tensor1d(
      rows.flatMap((r) => r.slice(1)),
      "int32",
    ),
  };
}

/** Mean next-token cross-entropy and its gradient for every weight, by Hugging Face name. */
function lossAndGrads(model: GPT, fused: boolean) {
  setFastKernelsEnabled(fused);
  const { inputs, targets } = batch(model.config.vocabSize);
  const weights = model.namedWeights();
  const nameOf = new Map([...weights].map(([name, v]) => [v.name, name]));
  const grads = new Map<string, Float32Array>();
  let loss = 0;
  tf.tidy(() => {
    const { value, grads: byVariable } = tf.variableGrads(() => {
      const logits = model.forward(inputs).reshape([B * T, model.config.vocabSize]);
      return tf.mean(crossEntropy(logits as tf.Tensor2D, targets)) as tf.Scalar;
    });
    for (const [k, g] of Object.entries(byVariable)) {
      grads.set(nameOf.get(k) as string, g.dataSync() as Float32Array);
    }
    loss = value.dataSync()[0];
  });
  tf.dispose([inputs, targets]);
  return { loss, grads };
}

/** Largest |a - b| relative to the largest |b| of the tensor. */
function relativeError(a: Float32Array, b: Float32Array): number {
  let diff = 0;
  let scale = 1e-12;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

const CONFIGS: [string, ModelConfig][] = [
  ["the probe shape (ReLU), scaled down", { ...MODEL_PRESETS.probe, dModel: 64, nLayers: 2 }],
  ["the tiny preset (GELU, byte vocabulary)", MODEL_PRESETS.tiny],
];

describe("GPT on the fused kernels", () => {
  it("has the native kernels to test (scripts/build-native.sh builds them)", () => {
    expect(installFastKernels("wasm").native).toBe(true);
  });

  for (const [name, config] of CONFIGS) {
    it(`matches the plain tfjs model's loss and gradients: ${name}`, () => {
      const model = new GPT(config, 5);
      const fused = lossAndGrads(model, true);
      const plain = lossAndGrads(model, false);
      expect(Math.abs(fused.loss - plain.loss)).toBeLessThan(1e-5 * Math.abs(plain.loss));
      expect([...fused.grads.keys()].sort()).toEqual([...plain.grads.keys()].sort());
      for (const [weight, g] of plain.grads) {
        const err = relativeError(fused.grads.get(weight) as Float32Array, g);
        expect(err, weight).toBeLessThan(1e-4);
      }
      model.dispose();
    });
  }

  it("generates the same logits with a KV cache as the plain model", () => {
    const model = new GPT(MODEL_PRESETS.tiny, 6);
    const steps = (fused: boolean) => {
      setFastKernelsEnabled(fused);
      const cache = new KVCache(model.config.nLayers);
      const out = tf.tidy(() => {
        const prefill = model.forward(tf.tensor2d([[1, 2, 3, 4, 5]], [1, 5], "int32"), { cache });
        const next = model.forward(tf.tensor2d([[6]], [1, 1], "int32"), { cache });
        return [...prefill.dataSync(), ...next.dataSync()];
      });
      cache.dispose();
      return Float32Array.from(out);
    };
    expect(relativeError(steps(true), steps(false))).toBeLessThan(1e-5);
    model.dispose();
  });

  it("keeps the tensor count flat across training passes", () => {
    const model = new GPT({ ...MODEL_PRESETS.probe, dModel: 32, nLayers: 1 }, 7);
    lossAndGrads(model, true);
    const before = tf.memory().numTensors;
    lossAndGrads(model, true);
    lossAndGrads(model, true);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });
});

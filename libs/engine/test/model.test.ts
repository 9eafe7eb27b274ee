import { beforeAll, describe, expect, it } from "vitest";
import { GPT, KVCache, MODEL_PRESETS, Rng, tf } from "../src/index";
import { useTestBackend } from "./support";

beforeAll(async () => {
  await useTestBackend();
});

const maxAbsDiff = (a: tf.Tensor, b: tf.Tensor) =>
  tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);

describe("GPT", () => {
  it("counts GPT-2's parameters and training FLOPs per token for the tiny preset", () => {
    const model = new GPT(MODEL_PRESETS.tiny, 1);
    const { vocabSize: v, contextLength: t, dModel: c, nLayers: l } = MODEL_PRESETS.tiny;
    const perLayer =
      2 * c + (c * 3 * c + 3 * c) + (c * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c);
    expect(model.parameterCount()).toBe(v * c + t * c + l * perLayer + 2 * c);
    // nanoGPT's estimate_mfu: 6N + 12 * L * H * Q * T with H * Q = C.
    expect(model.trainingFlopsPerToken(100)).toBe(6 * model.parameterCount() + 12 * l * c * 100);
    model.dispose();
  });

  it("gives equal weights for equal seeds and different weights for different seeds", () => {
    const [a, b, c] = [
      new GPT(MODEL_PRESETS.tiny, 1),
      new GPT(MODEL_PRESETS.tiny, 1),
      new GPT(MODEL_PRESETS.tiny, 2),
    ];
    const w = (m: GPT) =>
      Array.from(m.namedWeights().get("h.0.attn.c_attn.weight")?.dataSync() ?? []);
    expect(w(a)).toEqual(w(b));
    expect(w(a)).not.toEqual(w(c));
    for (const m of [a, b, c]) m.dispose();
  });

  it("returns the same logits when fed in pieces through a KV cache as in one pass", () => {
    const model = new GPT(MODEL_PRESETS.tiny, 3);
    const ids = [
      [5, 9, 120, 33, 7, 7, 64, 200],
      [1, 2, 3, 4, 5, 6, 7, 8],
    ];
    const full = model.forward(tf.tensor2d(ids, [2, 8], "int32")); // [2, 8, V]
    const cache = new KVCache(MODEL_PRESETS.tiny.nLayers);
    const pieces = [
      [0, 5],
      [5, 6],
      [6, 8],
    ].map(([from, to]) => {
      const piece = ids.map((row) => row.slice(from, to));
      return model.forward(tf.tensor2d(piece, [2, to - from], "int32"), { cache });
    });
    expect(cache.length).toBe(8);
    const stitched = tf.concat(pieces, 1);
    expect(maxAbsDiff(full, stitched)).toBeLessThan(1e-4);
    cache.dispose();
    for (const t of [full, stitched, ...pieces]) t.dispose();
    model.dispose();
  });

  it("gives each row's last-position logits in lastLogits, left-padded and through a cache", () => {
    const model = new GPT(MODEL_PRESETS.tiny, 3);
    const { vocabSize } = MODEL_PRESETS.tiny;
    const ids = tf.tensor2d(
      [
        [0, 0, 120, 33, 7],
        [1, 2, 3, 4, 5],
      ],
      [2, 5],
      "int32",
    );
    const padLeft = [2, 0];
    const full = model.forward(ids, { padLeft }); // [2, 5, V]
    const lastOfFull = full.slice([0, 4, 0], [2, 1, vocabSize]).reshape([2, vocabSize]);
    const cache = new KVCache(MODEL_PRESETS.tiny.nLayers);
    const last = model.lastLogits(ids, { padLeft, cache });
    expect(last.shape).toEqual([2, vocabSize]);
    expect(maxAbsDiff(last, lastOfFull)).toBeLessThan(1e-5);
    expect(cache.length).toBe(5); // the prompt's keys and values are cached as by forward()
    cache.dispose();
    for (const t of [ids, full, lastOfFull, last]) t.dispose();
    model.dispose();
  });

  it("applies dropout only while training", () => {
    const model = new GPT({ ...MODEL_PRESETS.tiny, dropout: 0.5 }, 1);
    const ids = tf.tensor2d([[1, 2, 3, 4]], [1, 4], "int32");
    const [eval1, eval2] = [model.forward(ids), model.forward(ids)];
    const train = model.forward(ids, { training: true, rng: Rng.create(1) });
    expect(maxAbsDiff(eval1, eval2)).toBe(0);
    expect(maxAbsDiff(eval1, train)).toBeGreaterThan(1e-3);
    for (const t of [ids, eval1, eval2, train]) t.dispose();
    model.dispose();
  });

  it("refuses sequences longer than its context and configs that make no sense", () => {
    const model = new GPT({ ...MODEL_PRESETS.tiny, contextLength: 4 }, 1);
    const ids = tf.zeros([1, 5], "int32") as tf.Tensor2D;
    expect(() => model.forward(ids)).toThrow(/5 tokens exceeds the context length 4/);
    const floats = tf.zeros([1, 2]) as tf.Tensor2D;
    expect(() => model.forward(floats)).toThrow(/ids must be int32, got float32/);
    floats.dispose();
    ids.dispose();
    model.dispose();
    expect(() => new GPT({ ...MODEL_PRESETS.tiny, nHeads: 3 }, 1)).toThrow(/divisible by nHeads/);
    expect(() => new GPT({ ...MODEL_PRESETS.tiny, dropout: 1 }, 1)).toThrow(/dropout/);
  });

  it("releases every weight on dispose", () => {
    const before = tf.memory().numTensors;
    const model = new GPT(MODEL_PRESETS.tiny, 1);
    expect(tf.memory().numTensors).toBe(before + model.namedWeights().size);
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

// LoRA (DeepSpeed-Chat's LinearLayer_LoRA): adapters that start as a no-op, train alone when
// asked, merge into their projections for generation and checkpoints, and resume exactly.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ByteTokenizer,
  GPT,
  HybridEngine,
  loadModel,
  MODEL_PRESETS,
  type SftConfig,
  SFTTrainer,
  saveModel,
  tf,
} from "../src/index";
import { EXAMPLES, OVERFIT, useTestBackend } from "./support";

const tokenizer = new ByteTokenizer();
const ids = () => tf.tensor2d([[5, 9, 42, 7, 100, 3]], [1, 6], "int32");

function logits(model: GPT): Float32Array {
  return tf.tidy(() => model.forward(ids()).dataSync() as Float32Array);
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

beforeAll(async () => {
  await useTestBackend();
});

describe("LoRA adapters", () => {
  let model: GPT;
  afterAll(() => model?.dispose());

  it("adapt the projections the module name selects and start as a no-op", () => {
    model = new GPT(MODEL_PRESETS.tiny, 1);
    const before = logits(model);
    const names = model.addLora({ dim: 4, moduleName: "attn.", seed: 2 });
    expect(names).toEqual(
      Array.from({ length: MODEL_PRESETS.tiny.nLayers }, (_, i) => [
        `h.${i}.attn.c_attn`,
        `h.${i}.attn.c_proj`,
      ]).flat(),
    );
    const lora = model.loraWeights();
    expect(lora.size).toBe(2 * names.length);
    const c = MODEL_PRESETS.tiny.dModel;
    expect(lora.get("h.0.attn.c_attn.lora_right_weight")?.shape).toEqual([c, 4]);
    expect(lora.get("h.0.attn.c_attn.lora_left_weight")?.shape).toEqual([4, 3 * c]);
    expect(Array.from(logits(model))).toEqual(Array.from(before));
    expect(() => model.addLora({ dim: 4, moduleName: "attn." })).toThrow(/already has LoRA/);
  });

  it("refuses a module name that matches nothing, naming the projections", () => {
    const other = new GPT(MODEL_PRESETS.tiny, 1);
    try {
      expect(() => other.addLora({ dim: 4, moduleName: "decoder.layers." })).toThrow(
        /matches no projection.*h\.0\.attn\.c_attn/,
      );
      expect(() => other.addLora({ dim: 0, moduleName: "h." })).toThrow(/LoRA dim/);
    } finally {
      other.dispose();
    }
  });

  it("merge into the weights (same logits) and unmerge back exactly", () => {
    // A non-zero update, as after training.
    for (const [name, w] of model.loraWeights())
      if (name.endsWith("left_weight")) w.assign(tf.randomNormal(w.shape, 0, 0.5, "float32", 9));
    const base = new Map([...model.namedWeights()].map(([n, w]) => [n, w.dataSync().slice()]));
    const adapted = logits(model);
    expect(maxDiff(adapted, logits(new GPT(MODEL_PRESETS.tiny, 1)))).toBeGreaterThan(1e-3);
    const tensors = tf.memory().numTensors;
    model.mergeLora();
    expect(model.loraMerged).toBe(true);
    expect(maxDiff(logits(model), adapted)).toBeLessThan(1e-4);
    expect(() => tf.tidy(() => model.forward(ids(), { training: true }))).toThrow(/merged/);
    model.unmergeLora();
    expect(tf.memory().numTensors).toBe(tensors);
    for (const [name, w] of model.namedWeights())
      expect(Array.from(w.dataSync()), name).toEqual(Array.from(base.get(name) as Float32Array));
    expect(Array.from(logits(model))).toEqual(Array.from(adapted));
  });

  it("are saved merged: the checkpoint is a plain model computing the same logits", async () => {
    const adapted = logits(model);
    const bytes = await saveModel(model, "sft");
    expect(model.loraMerged).toBe(false);
    const loaded = await loadModel(bytes);
    try {
      expect(loaded.hasLora).toBe(false);
      expect([...loaded.namedWeights().keys()]).toEqual([...model.namedWeights().keys()]);
      expect(maxDiff(logits(loaded), adapted)).toBeLessThan(1e-4);
    } finally {
      loaded.dispose();
    }
  });

  it("are merged while the hybrid engine generates and unmerged for training", async () => {
    const hybrid = new HybridEngine(model);
    let mergedDuring = false;
    const original = model.mergeLora.bind(model);
    model.mergeLora = () => {
      original();
      mergedDuring = model.loraMerged;
    };
    try {
      await hybrid.generate([[5, 9, 42]], {
        maxNewTokens: 4,
        temperature: 1,
        topP: 1,
        seed: "g",
        eosId: tokenizer.eosId,
        padId: tokenizer.padId,
        useCache: true,
      });
    } finally {
      model.mergeLora = original;
    }
    expect(mergedDuring).toBe(true);
    expect(model.loraMerged).toBe(false);
  });
});

describe("SFT with LoRA", () => {
  const lora = { dim: 8, moduleName: "h.", onlyOptimize: true, learningRate: 5e-2 };

  it("trains only the adapters with only_optimize_lora, lowering the loss, without leaking tensors", async () => {
    const model = new GPT(MODEL_PRESETS.tiny, 1);
    const base = new Map([...model.namedWeights()].map(([n, w]) => [n, w.dataSync().slice()]));
    const trainer = new SFTTrainer(model, tokenizer, EXAMPLES, { ...OVERFIT, maxSteps: 30, lora });
    try {
      const losses: number[] = [];
      const tensors = tf.memory().numTensors;
      while (trainer.step < trainer.totalSteps) {
        losses.push((await trainer.trainStep()).metrics.loss);
        if (trainer.step === 1) expect(tf.memory().numTensors).toBe(tensors);
      }
      expect(tf.memory().numTensors).toBe(tensors);
      // Embeddings and LM head stay random and frozen here, so the adapters alone go only so far
      // (5.57 -> 4.46 when written): a clear fall, not an overfit.
      expect(losses.at(-1) as number).toBeLessThan(losses[0] - 0.5);
      for (const [name, w] of model.namedWeights())
        expect(Array.from(w.dataSync()), name).toEqual(Array.from(base.get(name) as Float32Array));
      const left = model.loraWeights().get("h.0.mlp.c_fc.lora_left_weight") as tf.Variable;
      expect(tf.tidy(() => tf.max(tf.abs(left)).dataSync()[0])).toBeGreaterThan(0);
    } finally {
      trainer.dispose();
      model.dispose();
    }
  });

  it("trains the base weights too without only_optimize_lora", async () => {
    const model = new GPT(MODEL_PRESETS.tiny, 1);
    const wte = model.namedWeights().get("wte.weight")?.dataSync().slice() as Float32Array;
    const trainer = new SFTTrainer(model, tokenizer, EXAMPLES, {
      ...OVERFIT,
      maxSteps: 2,
      lora: { ...lora, onlyOptimize: false },
    });
    try {
      await trainer.trainStep();
      await trainer.trainStep();
      const now = model.namedWeights().get("wte.weight")?.dataSync() as Float32Array;
      expect(maxDiff(now, wte)).toBeGreaterThan(0);
    } finally {
      trainer.dispose();
      model.dispose();
    }
  });

  it("resumes from a (merged) checkpoint with exactly the losses and weights of an uninterrupted run", async () => {
    const config = { ...MODEL_PRESETS.tiny, dropout: 0.1, contextLength: 64 };
    const sft: SftConfig = {
      ...OVERFIT,
      maxSteps: 6,
      batchSize: 3,
      epochs: 5,
      warmupSteps: 2,
      lora: { ...lora, onlyOptimize: false },
    };
    const straight = new GPT(config, 3);
    const straightTrainer = new SFTTrainer(straight, tokenizer, EXAMPLES, sft);
    const expected: number[] = [];
    for (let i = 0; i < 6; i++) expected.push((await straightTrainer.trainStep()).metrics.loss);

    const first = new GPT(config, 3);
    const firstTrainer = new SFTTrainer(first, tokenizer, EXAMPLES, sft);
    const got: number[] = [];
    for (let i = 0; i < 3; i++) got.push((await firstTrainer.trainStep()).metrics.loss);
    const modelBytes = await saveModel(first);
    const stateBytes = await firstTrainer.exportState();
    firstTrainer.dispose();
    first.dispose();

    const resumed = await loadModel(modelBytes);
    const resumedTrainer = new SFTTrainer(resumed, tokenizer, EXAMPLES, sft);
    await resumedTrainer.importState(stateBytes);
    while (resumedTrainer.step < resumedTrainer.totalSteps)
      got.push((await resumedTrainer.trainStep()).metrics.loss);
    expect(got).toEqual(expected);
    const a = new Map([...straight.namedWeights(), ...straight.loraWeights()]);
    for (const [name, w] of [...resumed.namedWeights(), ...resumed.loraWeights()]) {
      expect(Array.from(w.dataSync()), name).toEqual(
        Array.from((a.get(name) as tf.Variable).dataSync()),
      );
    }
    for (const x of [straightTrainer, resumedTrainer, straight, resumed]) x.dispose();
  });
});

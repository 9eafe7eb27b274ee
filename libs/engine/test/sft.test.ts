import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  AdamW,
  ByteTokenizer,
  encodePrompt,
  GPT,
  generate,
  loadModel,
  MODEL_PRESETS,
  type SftConfig,
  SFTTrainer,
  saveModel,
  tf,
} from "../src/index";
import { EXAMPLES, OVERFIT, useTestBackend } from "./support";

const tokenizer = new ByteTokenizer();

beforeAll(async () => {
  await useTestBackend();
});

describe("SFTTrainer on the tiny model", () => {
  let model: GPT;
  let trainer: SFTTrainer;
  const losses: number[] = [];

  beforeAll(() => {
    model = new GPT(MODEL_PRESETS.tiny, 1);
    trainer = new SFTTrainer(model, tokenizer, EXAMPLES, OVERFIT);
  });

  afterAll(() => {
    trainer.dispose();
    model.dispose();
  });

  it("lowers the loss when overfitting four examples, without leaking tensors", async () => {
    const tensorsBefore = tf.memory().numTensors;
    while (trainer.step < trainer.totalSteps) losses.push((await trainer.trainStep()).metrics.loss);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(trainer.step).toBe(40);
    const first = losses.slice(0, 3).reduce((a, b) => a + b) / 3;
    const last = losses.slice(-3).reduce((a, b) => a + b) / 3;
    expect(first).toBeGreaterThan(3); // about ln(262) = 5.57 at the start
    expect(last).toBeLessThan(first / 4);
  });

  it("reports the step, learning rate, tokens and gradient norm of each step", async () => {
    const fresh = new GPT(MODEL_PRESETS.tiny, 1);
    const t = new SFTTrainer(fresh, tokenizer, EXAMPLES, { ...OVERFIT, maxSteps: 2 });
    const first = await t.trainStep();
    expect(first.step).toBe(1);
    expect(first.metrics.lr).toBeCloseTo(OVERFIT.learningRate / OVERFIT.warmupSteps, 10);
    // Every example is prompt + response + eos in bytes; the model reads all but the last token.
    const expectedTokens = EXAMPLES.reduce(
      (sum, e) =>
        sum + encodePrompt(tokenizer, e.prompt).length + tokenizer.encode(e.response).length,
      0,
    );
    expect(first.tokens).toBe(expectedTokens);
    expect(first.metrics.grad_norm).toBeGreaterThan(0);
    await t.trainStep();
    await expect(t.trainStep()).rejects.toThrow(/finished/);
    t.dispose();
    fresh.dispose();
  });

  it("answers a training prompt with the trained response and stops at end-of-text", async () => {
    const tensorsBefore = tf.memory().numTensors;
    const [hi, sky] = await generate(model, tokenizer, [EXAMPLES[1].prompt, EXAMPLES[2].prompt], {
      maxTokens: 30,
      temperature: 0,
      topP: 1,
    });
    expect(hi).toMatchObject({ text: "Hello there!", finishReason: "stop" });
    expect(sky).toMatchObject({ text: "Blue.", finishReason: "stop" });
    await generate(model, tokenizer, [EXAMPLES[0].prompt], {
      maxTokens: 5,
      temperature: 1,
      topP: 0.9,
      seed: 1,
    });
    expect(tf.memory().numTensors).toBe(tensorsBefore);
  });
});

describe("a training step that fails", () => {
  it("releases every tensor it made when the optimizer update throws (e.g. out of device memory)", async () => {
    const model = new GPT(MODEL_PRESETS.tiny, 1);
    const trainer = new SFTTrainer(model, tokenizer, EXAMPLES, OVERFIT);
    const tensorsBefore = tf.memory().numTensors;
    const apply = vi.spyOn(AdamW.prototype, "apply").mockImplementationOnce(() => {
      throw new Error("out of device memory");
    });
    try {
      await expect(trainer.trainStep()).rejects.toThrow(/out of device memory/);
    } finally {
      apply.mockRestore();
    }
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(trainer.step).toBe(0);
    trainer.dispose();
    model.dispose();
  });
});

describe("resuming SFT from a checkpoint", () => {
  // Dropout on, so the resumed run must also restore the RNG to drop the same units.
  const config = { ...MODEL_PRESETS.tiny, dropout: 0.1, contextLength: 64 };
  const sft: SftConfig = { ...OVERFIT, maxSteps: 6, batchSize: 3, epochs: 5, warmupSteps: 2 };

  it("continues with exactly the losses and weights of an uninterrupted run", async () => {
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
    await firstTrainer.trainStep(); // the interrupted process moves on; its state was saved before
    firstTrainer.dispose();
    first.dispose();

    const resumed = await loadModel(modelBytes);
    const resumedTrainer = new SFTTrainer(resumed, tokenizer, EXAMPLES, sft);
    await resumedTrainer.importState(stateBytes);
    expect(resumedTrainer.step).toBe(3);
    while (resumedTrainer.step < resumedTrainer.totalSteps)
      got.push((await resumedTrainer.trainStep()).metrics.loss);

    expect(got).toEqual(expected);
    const a = straight.namedWeights();
    for (const [name, w] of resumed.namedWeights()) {
      expect(Array.from(w.dataSync()), name).toEqual(
        Array.from((a.get(name) as tf.Variable).dataSync()),
      );
    }
    for (const x of [straightTrainer, resumedTrainer, straight, resumed]) x.dispose();
  });

  it("refuses trainer state saved with a different seed", async () => {
    const model = new GPT(config, 3);
    const trainer = new SFTTrainer(model, tokenizer, EXAMPLES, sft);
    const state = await trainer.exportState();
    const other = new SFTTrainer(model, tokenizer, EXAMPLES, { ...sft, seed: 8 });
    await expect(other.importState(state)).rejects.toThrow(/seed 7.*has 8/);
    await expect(other.importState(new Uint8Array([1, 2, 3]))).rejects.toThrow(/safetensors/);
    for (const x of [trainer, other, model]) x.dispose();
  });
});

describe("SFT config validation", () => {
  it("names the bad setting", () => {
    const model = new GPT(MODEL_PRESETS.tiny, 1);
    expect(() => new SFTTrainer(model, tokenizer, EXAMPLES, { ...OVERFIT, batchSize: 0 })).toThrow(
      /batchSize/,
    );
    expect(
      () => new SFTTrainer(model, tokenizer, EXAMPLES, { ...OVERFIT, maxSeqLen: 4096 }),
    ).toThrow(/maxSeqLen 4096 exceeds the model's context length 128/);
    expect(() => new SFTTrainer(model, tokenizer, [], OVERFIT)).toThrow(/at least one example/);
    model.dispose();
  });
});

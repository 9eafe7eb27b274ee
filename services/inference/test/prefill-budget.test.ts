// The decode loop's prefill budget (LoopLimits.maxPrefillTokens): requests admitted together are
// prefilled in turn, a budget's worth per forward pass between decode steps, and a seeded
// request's reply does not depend on how the prefills were cut.
import {
  GPT,
  initBackend,
  MODEL_PRESETS,
  servingTokenRules,
  tf,
  tokenizerFor,
} from "@chatrl/engine";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ChoiceOptions, DecodeLoop, type GenerationResult } from "../src/decode-loop.ts";

const config = { ...MODEL_PRESETS.tiny, contextLength: 64 };
let model: GPT;

beforeAll(async () => {
  await initBackend();
  model = new GPT(config, 7);
});
afterAll(() => model.dispose());

const options: ChoiceOptions = {
  maxTokens: 6,
  minTokens: 6,
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  stop: [],
};

/** Six seeded 10-token prompts submitted at once under `budget`; replies and prefill passes. */
async function burst(budget: number): Promise<{ results: GenerationResult[]; prefills: number }> {
  const tokenizer = tokenizerFor(config);
  const loop = new DecodeLoop(model, tokenizer, servingTokenRules(tokenizer, config.vocabSize), {
    maxRunningRows: 16,
    maxKvTokens: 4096,
    maxQueuedRequests: 16,
    maxPrefillTokens: budget,
  });
  const results = await Promise.all(
    Array.from({ length: 6 }, (_, i) =>
      loop.submit({
        prompt: Array.from({ length: 10 }, (_, t) => 40 + ((i * 7 + t) % 50)),
        n: 1,
        options,
        seed: 100 + i,
      }),
    ),
  );
  const { prefills } = loop.stats();
  await loop.close();
  return { results, prefills };
}

describe("the decode loop's prefill budget", () => {
  it("prefills a burst a budget at a time, with the same seeded replies as one pass", async () => {
    const before = tf.memory().numTensors;
    const whole = await burst(1000);
    const cut = await burst(20); // two 10-token prompts per pass
    const alone = await burst(1); // a prompt longer than the budget still goes, alone
    // The loop starts on the first submit and prefills that request before the others arrive:
    // then the other five in one pass, in three (2 + 2 + 1), or one by one.
    expect(whole.prefills).toBe(2);
    expect(cut.prefills).toBe(4);
    expect(alone.prefills).toBe(6);
    const texts = (r: { results: GenerationResult[] }) => r.results.map((x) => x.choices[0].text);
    expect(texts(cut)).toEqual(texts(whole));
    expect(texts(alone)).toEqual(texts(whole));
    expect(whole.results.every((r) => r.completionTokens === 6)).toBe(true);
    expect(tf.memory().numTensors).toBe(before);
  });
});

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ByteTokenizer, GPT, generate, MODEL_PRESETS, type Tokenizer, tf } from "../src/index";
import { useTestBackend } from "./support";

// Maps ids to letters so that any sampled sequence is readable text; ids 256/257 are eos/pad.
const letters: Tokenizer = {
  vocabSize: 258,
  eosId: 256,
  padId: 257,
  encode: (text) => Array.from(text, (c) => c.charCodeAt(0) - 97),
  decode: (ids) =>
    ids
      .filter((id) => id < 256)
      .map((id) => String.fromCharCode(97 + (id % 26)))
      .join(""),
  bytes: (ids) => new TextEncoder().encode(letters.decode(ids)),
  tokenName: (id) => letters.decode([id]),
};

const config = { ...MODEL_PRESETS.tiny, contextLength: 48 };
let model: GPT;

beforeAll(async () => {
  await useTestBackend();
  model = new GPT(config, 11);
});

afterAll(() => model.dispose());

/** Greedy decoding without a cache: the whole sequence goes through the model for every token. */
function greedyByRecomputing(prompt: number[], maxTokens: number, eosId: number): number[] {
  const seq = [...prompt];
  const out: number[] = [];
  while (out.length < maxTokens && seq.length < config.contextLength) {
    const next = tf.tidy(() => {
      const logits = model.forward(tf.tensor2d([seq], [1, seq.length], "int32")); // [1, T, V]
      return logits
        .slice([0, seq.length - 1, 0], [1, 1, config.vocabSize])
        .argMax(-1)
        .dataSync()[0];
    });
    out.push(next);
    if (next === eosId) break;
    seq.push(next);
  }
  return out;
}

describe("generate", () => {
  it("produces with the KV cache the same greedy tokens as recomputing the full sequence", async () => {
    const prompt = "thequickbrownfox";
    const [result] = await generate(model, letters, [prompt], {
      maxTokens: 20,
      temperature: 0,
      topP: 1,
    });
    const expected = greedyByRecomputing(letters.encode(prompt), 20, letters.eosId);
    expect(result.text).toBe(letters.decode(expected));
    expect(result.completionTokens).toBe(expected.length);
    expect(result.promptTokens).toBe(prompt.length);
  });

  it("gives each prompt of a batch of different lengths the output it gets alone", async () => {
    const prompts = ["ab", "thelazydogsleeps", "hello"];
    const opts = { maxTokens: 12, temperature: 0, topP: 1 };
    const batched = await generate(model, letters, prompts, opts);
    for (const [i, prompt] of prompts.entries()) {
      const [alone] = await generate(model, letters, [prompt], opts);
      expect(batched[i], prompt).toEqual(alone);
    }
  });

  it("repeats its samples for the same seed and varies them for another", async () => {
    const opts = { maxTokens: 16, temperature: 1, topP: 0.95 };
    const prompts = ["once", "upon"];
    const a = await generate(model, letters, prompts, { ...opts, seed: 1 });
    const b = await generate(model, letters, prompts, { ...opts, seed: 1 });
    const c = await generate(model, letters, prompts, { ...opts, seed: 2 });
    expect(b).toEqual(a);
    expect(c.map((r) => r.text)).not.toEqual(a.map((r) => r.text));
  });

  it("ends at maxTokens with finishReason length", async () => {
    const [result] = await generate(model, new ByteTokenizer(), ["hi"], {
      maxTokens: 3,
      temperature: 1,
      topP: 1,
      seed: 4,
    });
    // A random model rarely picks eos (1 in 258); with this seed it does not.
    expect(result).toMatchObject({ completionTokens: 3, finishReason: "length" });
  });

  it("cuts the text before a stop string, reports stop, and never streams the stop string", async () => {
    const opts = { maxTokens: 30, temperature: 1, topP: 1, seed: 5 };
    const [free] = await generate(model, letters, ["story"], opts);
    expect(free.text.length).toBeGreaterThan(12);
    const stop = free.text.slice(8, 10);
    const cut = free.text.indexOf(stop);

    const chunks: string[] = [];
    const [stopped] = await generate(model, letters, ["story"], {
      ...opts,
      stop: ["zzzzzzzz", stop],
      onToken: (index, text) => {
        expect(index).toBe(0);
        chunks.push(text);
      },
    });
    expect(stopped.text).toBe(free.text.slice(0, cut));
    expect(stopped.finishReason).toBe("stop");
    expect(stopped.completionTokens).toBe(cut + stop.length);
    expect(chunks.join("")).toBe(stopped.text);
    expect(chunks.length).toBeGreaterThan(1);
  });

  it("streams each prompt's text in order, adding up to its final text", async () => {
    const streamed = ["", ""];
    const results = await generate(model, letters, ["ab", "cdef"], {
      maxTokens: 10,
      temperature: 1,
      topP: 0.9,
      seed: 3,
      onToken: (index, text) => {
        streamed[index] += text;
      },
    });
    expect(streamed).toEqual(results.map((r) => r.text));
  });

  it("keeps the end of a prompt longer than the context, leaving room to answer", async () => {
    const long = "abcdefghijklmnopqrstuvwxyz".repeat(3); // 78 tokens, context 48
    const opts = { maxTokens: 8, temperature: 0, topP: 1 };
    const [truncated] = await generate(model, letters, [long], opts);
    expect(truncated.promptTokens).toBe(48 - 8);
    const [fromEnd] = await generate(model, letters, [long.slice(-40)], opts);
    expect(truncated).toEqual(fromEnd);
  });

  it("releases every tensor it makes", async () => {
    await generate(model, letters, ["warm"], { maxTokens: 2, temperature: 0, topP: 1 });
    const before = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) {
      await generate(model, letters, ["a", "bcd"], {
        maxTokens: 5,
        temperature: 0.8,
        topP: 0.9,
        seed: i,
        stop: ["q"],
      });
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it("refuses nonsense options", async () => {
    const base = { maxTokens: 5, temperature: 1, topP: 1 };
    await expect(generate(model, letters, ["a"], { ...base, maxTokens: 0 })).rejects.toThrow(
      /maxTokens/,
    );
    await expect(generate(model, letters, ["a"], { ...base, temperature: -1 })).rejects.toThrow(
      /temperature/,
    );
    await expect(generate(model, letters, ["a"], { ...base, topP: 0 })).rejects.toThrow(/topP/);
  });
});

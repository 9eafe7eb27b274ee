// The step-wise decoder under continuous batching: rows join and leave a running batch, each
// with its own options and seeded stream, and no tensor outlives a step.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  applyRepetitionPenalty,
  ByteTokenizer,
  DecodeBatch,
  type DecodeRowOptions,
  GPT,
  MODEL_PRESETS,
  Rng,
  sampleToken,
  sampleTokens,
  servingTokenRules,
  type TokenSampling,
  tf,
} from "../src/index";
import { fusedKernelsActive } from "../src/kernels/index.ts";
import { paddedCausalAttention } from "../src/padded-attention.ts";
import { useTestBackend } from "./support";

const config = { ...MODEL_PRESETS.tiny, contextLength: 64 };
const tokenizer = new ByteTokenizer();
const rules = servingTokenRules(tokenizer, config.vocabSize);
let model: GPT;

beforeAll(async () => {
  await useTestBackend();
  model = new GPT(config, 5);
});

afterAll(() => model.dispose());

const ids = (text: string) => tokenizer.encode(text);
const row = (o: Partial<DecodeRowOptions> = {}): DecodeRowOptions => ({
  maxNewTokens: 12,
  temperature: 1,
  topP: 1,
  seed: "s",
  stopIds: [],
  suppressIds: rules.suppress,
  ...o,
});

/** Runs the batch until every row is done, adding `later` requests after `after` steps. */
async function drain(batch: DecodeBatch, after = 0, later: Parameters<DecodeBatch["add"]>[0] = []) {
  const joined = [];
  for (let step = 0; batch.size > 0 || joined.length === 0; step++) {
    if (step === after && later.length > 0) joined.push(...(await batch.add(later)));
    if (batch.size === 0) break;
    await batch.step();
  }
  return joined;
}

async function alone(prompt: string, options: DecodeRowOptions): Promise<number[]> {
  const batch = new DecodeBatch(model);
  const [[r]] = await batch.add([{ prompt: ids(prompt), rows: [options] }]);
  while (batch.size > 0) await batch.step();
  batch.dispose();
  return r.tokens;
}

describe("DecodeBatch", () => {
  it("gives a seeded row the same tokens alone, in a batch, and joining one mid-way", async () => {
    const seeded = row({ seed: "fixed", maxNewTokens: 16 });
    const reference = await alone("Hello", seeded);
    expect(reference).toHaveLength(16);

    const batch = new DecodeBatch(model);
    const first = await batch.add([
      { prompt: ids("a much longer prompt than the other one"), rows: [row({ seed: 1, topK: 5 })] },
      { prompt: ids("x"), rows: [row({ seed: 2, temperature: 0.3, maxNewTokens: 3 })] },
    ]);
    const [[joined]] = await drain(batch, 4, [{ prompt: ids("Hello"), rows: [seeded] }]);
    expect(joined.tokens).toEqual(reference);
    expect(first[1][0].tokens).toHaveLength(3); // its own max, not its neighbours'
    expect(first[0][0].finish).toBe("length");
    batch.dispose();
  });

  it("answers greedy rows exactly as decoding each alone does", async () => {
    const greedy = row({ temperature: 0, maxNewTokens: 10 });
    const prompts = ["Hi", "What is two plus two?", "ok"];
    const expected = await Promise.all(prompts.map((p) => alone(p, greedy)));
    const batch = new DecodeBatch(model);
    const rows = await batch.add(
      prompts.slice(0, 2).map((p) => ({ prompt: ids(p), rows: [greedy] })),
    );
    const [[late]] = await drain(batch, 3, [{ prompt: ids(prompts[2]), rows: [greedy] }]);
    expect([rows[0][0].tokens, rows[1][0].tokens, late.tokens]).toEqual(expected);
    batch.dispose();
  });

  it("prefills a prompt once for several rows, each with its own stream", async () => {
    const batch = new DecodeBatch(model);
    const [rows] = await batch.add([
      {
        prompt: ids("Once"),
        rows: [row({ seed: "n:0" }), row({ seed: "n:1" }), row({ seed: "n:0" })],
      },
    ]);
    expect(batch.counts.prefills).toBe(1);
    await drain(batch);
    expect(rows[0].tokens).toEqual(rows[2].tokens);
    expect(rows[0].tokens).not.toEqual(rows[1].tokens);
    expect(rows[0].tokens).toEqual(await alone("Once", row({ seed: "n:0" })));
    batch.dispose();
  });

  it("lets a dropped row leave at the next step while the others go on", async () => {
    const batch = new DecodeBatch(model);
    const [[a], [b]] = await batch.add([
      { prompt: ids("first"), rows: [row({ maxNewTokens: 20 })] },
      { prompt: ids("second one"), rows: [row({ maxNewTokens: 20 })] },
    ]);
    await batch.step();
    await batch.step();
    b.dropped = true;
    await batch.step();
    expect(batch.size).toBe(1);
    expect(b.tokens).toHaveLength(2);
    await drain(batch);
    expect(a.tokens).toHaveLength(20);
    batch.dispose();
  });

  it("never samples a suppressed token, and not a stop token before the minimum", async () => {
    // Pad made the most likely token of every step: still never sampled.
    const favourite = (await alone("abc", row({ temperature: 0, maxNewTokens: 1 })))[0];
    const withoutIt = await alone(
      "abc",
      row({ temperature: 0, maxNewTokens: 6, suppressIds: [...rules.suppress, favourite] }),
    );
    expect(withoutIt).not.toContain(favourite);
    const stopping = await alone(
      "abc",
      row({ temperature: 0, maxNewTokens: 6, stopIds: [favourite] }),
    );
    expect(stopping).toEqual([favourite]);
    const atLeast = await alone(
      "abc",
      row({ temperature: 0, maxNewTokens: 6, stopIds: [favourite], minNewTokens: 4 }),
    );
    expect(atLeast.slice(0, 4)).not.toContain(favourite);
  });

  it("reports each token's log-probability and the most likely alternatives", async () => {
    const batch = new DecodeBatch(model);
    const [[r]] = await batch.add([
      { prompt: ids("log"), rows: [row({ temperature: 0, logprobs: 3, maxNewTokens: 2 })] },
    ]);
    await drain(batch);
    expect(r.logprobs).toHaveLength(2);
    const [first] = r.logprobs;
    expect(first.token).toBe(r.tokens[0]);
    expect(first.top).toHaveLength(3);
    expect(first.top[0].token).toBe(first.token); // greedy took the most likely
    expect(first.top[0].logprob).toBeCloseTo(first.logprob, 5);
    expect(first.top[1].logprob).toBeLessThanOrEqual(first.top[0].logprob);
    batch.dispose();
  });

  it("stops a row at the end of the context", async () => {
    const long = "y".repeat(config.contextLength - 3);
    const tokens = await alone(long, row({ maxNewTokens: 50 }));
    expect(tokens).toHaveLength(4); // positions 61, 62, 63 fed, the fourth token sampled last
  });

  it("keeps the tensor count flat across steps, joins and departures", async () => {
    const batch = new DecodeBatch(model);
    await batch.add([{ prompt: ids("warm"), rows: [row({ maxNewTokens: 40 })] }]);
    await batch.step();
    const counts: number[] = [];
    for (let step = 0; step < 12; step++) {
      if (step === 3)
        await batch.add([{ prompt: ids("joiner"), rows: [row({ maxNewTokens: 4 })] }]);
      await batch.step();
      if (step === 2 || step === 9) counts.push(tf.memory().numTensors);
    }
    expect(counts[1]).toBe(counts[0]);
    batch.dispose();
  });

  it("still never samples padding in PPO's batch sampler", async () => {
    const vocab = 4;
    // A model whose every row of logits favours padding: the sampler must pick something else.
    const fake = {
      config: { ...config, vocabSize: vocab },
      forward: (input: tf.Tensor2D) =>
        tf.tidy(() => tf.tile(tf.tensor3d([[[0, 0, 0, 50]]]), [input.shape[0], input.shape[1], 1])),
    } as unknown as GPT;
    const [sampled] = await sampleTokens(fake, [[1]], {
      maxNewTokens: 5,
      temperature: 1,
      topP: 1,
      seed: 1,
      eosId: 0,
      padId: 3,
      useCache: false,
    });
    expect(sampled.tokens).not.toContain(3);
  });
});

describe("sampling rules", () => {
  const logits = () => Float32Array.from([0, Math.log(2), Math.log(4)]); // p = 1/7, 2/7, 4/7
  const draws = (opts: TokenSampling, n = 300) => {
    const rng = Rng.create("rules");
    const seen = new Set<number>();
    for (let i = 0; i < n; i++) seen.add(sampleToken(logits(), opts, rng));
    return [...seen].sort();
  };

  it("keeps the top k, the nucleus and the min-p floor", () => {
    expect(draws({ temperature: 1, topP: 1 })).toEqual([0, 1, 2]);
    expect(draws({ temperature: 1, topP: 1, topK: 1 })).toEqual([2]);
    expect(draws({ temperature: 1, topP: 1, topK: 2 })).toEqual([1, 2]);
    // min_p 0.3: the floor is 0.3 * 4/7 = 1.2/7, above token 0's 1/7.
    expect(draws({ temperature: 1, topP: 1, minP: 0.3 })).toEqual([1, 2]);
    // top_p 0.5: 4/7 alone already reaches it.
    expect(draws({ temperature: 1, topP: 0.5 })).toEqual([2]);
  });

  it("divides positive logits and multiplies negative ones by the repetition penalty", () => {
    const l = Float32Array.from([2, -1, 3]);
    applyRepetitionPenalty(l, [0, 1], 2);
    expect(Array.from(l)).toEqual([1, -2, 3]);
  });
});

describe("a decode step's attention over zeroed padding", () => {
  it("matches the exact masked attention, on the fused kernel", () => {
    expect(fusedKernelsActive()).toBe(true); // the native kernels are built (npm run setup)
    const [batch, heads, time, hs] = [3, 2, 9, 8];
    const padLeft = [0, 4, 7];
    const rand = (shape: number[], seed: number) => tf.randomNormal(shape, 0, 1, "float32", seed);
    tf.tidy(() => {
      const keep = tf.tensor4d(
        Array.from({ length: batch * time }, (_, i) =>
          i % time < padLeft[Math.floor(i / time)] ? 0 : 1,
        ),
        [batch, 1, time, 1],
      );
      const q = rand([batch, heads, 1, hs], 1) as tf.Tensor4D;
      const k = tf.mul(rand([batch, heads, time, hs], 2), keep) as tf.Tensor4D;
      const v = tf.mul(rand([batch, heads, time, hs], 3), keep) as tf.Tensor4D;
      const fast = paddedCausalAttention(q, k, v, padLeft, true);
      const exact = paddedCausalAttention(q, k, v, padLeft, false);
      const diff = tf.max(tf.abs(tf.sub(fast, exact))).dataSync()[0];
      expect(diff).toBeLessThan(1e-5);
    });
  });
});

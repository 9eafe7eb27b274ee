// The step-wise decoder under continuous batching: rows join and leave a running batch, each
// with its own options and seeded stream, and no tensor outlives a step.
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  applyRepetitionPenalty,
  ByteTokenizer,
  DecodeBatch,
  type DecodeRowOptions,
  decodeSafetensors,
  GPT,
  loadWeights,
  MODEL_PRESETS,
  Rng,
  sampleToken,
  sampleTokens,
  saveModel,
  servingTokenRules,
  type TokenSampling,
  tf,
} from "../src/index";
import {
  fusedKernelsActive,
  loadNativeKernels,
  setFastKernelsEnabled,
} from "../src/kernels/index.ts";
import type { DecodeDtype } from "../src/kernels/index.ts";
import { KVCache } from "../src/kv-cache.ts";
import { PagedKVCache } from "../src/paged-kv-cache.ts";
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

async function alone(
  prompt: string,
  options: DecodeRowOptions,
  dtype: DecodeDtype = "float32",
): Promise<number[]> {
  const batch = new DecodeBatch(model, { dtype });
  const [[r]] = await batch.add([{ prompt: ids(prompt), rows: [options] }]);
  while (batch.size > 0) await batch.step();
  batch.dispose();
  return r.tokens;
}

describe("DecodeBatch", () => {
  // bfloat16: served by default where the CPU multiplies it (AMX, AVX-512 BF16).
  const DTYPES = ["float32", "bfloat16"] as const;

  it.each(DTYPES)(
    "gives a seeded row the same tokens alone, in a batch, and joining one mid-way (%s weights)",
    async (dtype) => {
      const seeded = row({ seed: "fixed", maxNewTokens: 16 });
      const reference = await alone("Hello", seeded, dtype);
      expect(reference).toHaveLength(16);

      const batch = new DecodeBatch(model, { dtype });
      expect(model.decodeDtype).toBe(dtype);
      const first = await batch.add([
        {
          prompt: ids("a much longer prompt than the other one"),
          rows: [row({ seed: 1, topK: 5 })],
        },
        { prompt: ids("x"), rows: [row({ seed: 2, temperature: 0.3, maxNewTokens: 3 })] },
      ]);
      const [[joined]] = await drain(batch, 4, [{ prompt: ids("Hello"), rows: [seeded] }]);
      expect(joined.tokens).toEqual(reference);
      expect(first[1][0].tokens).toHaveLength(3); // its own max, not its neighbours'
      expect(first[0][0].finish).toBe("length");
      batch.dispose();
    },
  );

  it.each(DTYPES)(
    "answers greedy rows exactly as decoding each alone does (%s weights)",
    async (dtype) => {
      const greedy = row({ temperature: 0, maxNewTokens: 10 });
      const prompts = ["Hi", "What is two plus two?", "ok"];
      const expected = [];
      for (const p of prompts) expected.push(await alone(p, greedy, dtype));
      const batch = new DecodeBatch(model, { dtype });
      const rows = await batch.add(
        prompts.slice(0, 2).map((p) => ({ prompt: ids(p), rows: [greedy] })),
      );
      const [[late]] = await drain(batch, 3, [{ prompt: ids(prompts[2]), rows: [greedy] }]);
      expect([rows[0][0].tokens, rows[1][0].tokens, late.tokens]).toEqual(expected);
      batch.dispose();
    },
  );

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

  it("prefills prompts across blocks to the model's own logits, each row with its copy", async () => {
    const prompts = ["a prompt that runs across three blocks of sixteen", "short"];
    const batch = new DecodeBatch(model);
    const rows = await batch.add(
      prompts.map((p) => ({ prompt: ids(p), rows: [row({ seed: "c" }), row({ seed: "c" })] })),
    );
    for (const [i, prompt] of prompts.entries()) {
      const want = tf.tidy(
        () =>
          model
            .lastLogits(tf.tensor2d([ids(prompt)], [1, ids(prompt).length], "int32"))
            .dataSync() as Float32Array,
      );
      for (const r of rows[i]) {
        const got = r.pending as Float32Array;
        const diff = Math.max(...got.map((x, j) => Math.abs(x - want[j])));
        // Natively the prompt's keys and values are read back as float16: ~1e-3 of the logits.
        expect(diff / Math.max(...want.map(Math.abs))).toBeLessThan(1e-2);
      }
    }
    await drain(batch);
    // Two rows of one seed: the second decodes on its copy of the first's positions.
    for (const [first, second] of rows) expect(second.tokens).toEqual(first.tokens);
    expect(rows[0][0].tokens).toEqual(await alone(prompts[0], row({ seed: "c" })));
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

  it("decodes on packed copies of the weights, dropped when the weights are replaced", async () => {
    const greedy = row({ temperature: 0, maxNewTokens: 16 });
    const decode = async (m: GPT) => {
      const batch = new DecodeBatch(m); // packs m's weights
      const [[r]] = await batch.add([{ prompt: ids("packed weights"), rows: [greedy] }]);
      await drain(batch);
      batch.dispose();
      return r.tokens;
    };
    const a = new GPT(config, 11);
    const b = new GPT(config, 12);
    try {
      const fromA = await decode(a);
      expect(a.packForDecoding()).toBe(0); // already packed by the batch
      const fromB = await decode(b);
      expect(fromB).not.toEqual(fromA);
      // a takes b's weights: its decode copies must go, or a would still answer as before.
      loadWeights(a, decodeSafetensors(await saveModel(b)).tensors);
      expect(await decode(a)).toEqual(fromB);
      a.unpackDecoding();
      expect(a.packForDecoding()).toBeGreaterThan(0);
    } finally {
      a.dispose();
      b.dispose();
    }
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

  /** A model whose every row of logits is `logits`, for PPO's batch sampler. */
  const fixedLogits = (logits: number[]) =>
    ({
      config: { ...config, vocabSize: logits.length },
      lastLogits: (input: tf.Tensor2D) =>
        tf.tidy(() => tf.tile(tf.tensor2d([logits]), [input.shape[0], 1])),
    }) as unknown as GPT;
  const ppoSampling = { maxNewTokens: 5, temperature: 1, topP: 1, seed: 1, eosId: 0, padId: 3 };

  it("still never samples padding in PPO's batch sampler", async () => {
    // Logits that favour padding: the sampler must pick something else.
    const [sampled] = await sampleTokens(fixedLogits([0, 0, 0, 50]), [[1]], {
      ...ppoSampling,
      useCache: false,
    });
    expect(sampled.tokens).not.toContain(3);
  });

  it("ends a row of PPO's batch sampler at a role token, as at its eos", async () => {
    // Logits that favour token 2 (a role token): the row ends there, the token kept.
    const fake = fixedLogits([0, 0, 50, 0]);
    const opts = { ...ppoSampling, useCache: false };
    const [ended] = await sampleTokens(fake, [[1]], { ...opts, endIds: [2] });
    expect(ended).toMatchObject({ tokens: [2], finish: "eos" });
    const [free] = await sampleTokens(fake, [[1]], opts);
    expect(free).toMatchObject({ tokens: [2, 2, 2, 2, 2], finish: "length" });
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

describe("the paged KV cache", () => {
  const { nLayers, nHeads, dModel } = config;

  /** x rounded to the nearest float16 (round half to even), as the native pools store it. */
  function toHalf(t: tf.Tensor): tf.Tensor {
    const bits = new Uint32Array(Float32Array.from(t.dataSync()).buffer);
    const floats = new Float32Array(bits.buffer);
    for (let i = 0; i < bits.length; i++) {
      if (Math.abs(floats[i]) < 2 ** -14) {
        floats[i] = Math.round(floats[i] * 2 ** 24) / 2 ** 24; // float16's subnormals
      } else {
        const b = bits[i];
        bits[i] = ((b + 0xfff + ((b >>> 13) & 1)) & ~0x1fff) >>> 0;
      }
    }
    return tf.tensor(floats, t.shape);
  }

  /**
   * One decode step's attention for rows of these lengths, on blocks handed out out of order,
   * and the same written out in tfjs (keys and values rounded to float16 when the cache stores
   * them so: on the native kernels).
   */
  function pagedStep(lengths: number[], seed: number): { out: number[]; reference: number[] } {
    const stored = fusedKernelsActive() ? toHalf : (t: tf.Tensor) => t;
    const cache = new PagedKVCache(1, nHeads, dModel, 4);
    const hs = dModel / nHeads;
    const prefill = new KVCache(1);
    const width = Math.max(...lengths, 1);
    try {
      // Take and give back blocks first, so the rows' blocks are neither contiguous nor in order.
      cache.release(cache.allocate(7).filter((_, i) => i % 2 === 0));
      const rows = lengths.map((length) => ({
        blocks: cache.allocate(Math.floor(length / 4) + 1),
        length,
      }));
      const keys = tf.randomNormal([lengths.length, nHeads, width, hs], 0, 1, "float32", seed);
      const values = tf.randomNormal(
        [lengths.length, nHeads, width, hs],
        0,
        1,
        "float32",
        seed + 1,
      );
      prefill.append(0, keys as tf.Tensor4D, values as tf.Tensor4D);
      cache.store(
        prefill,
        rows.map((r, i) => ({ ...r, source: i, start: 0 })),
      );
      const qkv = tf.randomNormal(
        [lengths.length, 3 * dModel],
        0,
        1,
        "float32",
        seed + 2,
      ) as tf.Tensor2D;
      cache.beginStep(rows);
      const out = tf.tidy(() => Array.from(cache.attend(0, qkv).dataSync()));
      cache.endStep();
      // The same attention written out: each row's cached positions and this step's key and value.
      const reference = tf.tidy(() => {
        const heads = (t: tf.Tensor, part: number) =>
          t
            .slice([0, part * dModel], [lengths.length, dModel])
            .reshape([lengths.length, nHeads, 1, hs]);
        const parts = lengths.map((length, i) => {
          const q = heads(qkv, 0).slice([i, 0, 0, 0], [1, nHeads, 1, hs]);
          const k = stored(
            tf.concat(
              [
                keys.slice([i, 0, 0, 0], [1, nHeads, length, hs]),
                heads(qkv, 1).slice([i, 0, 0, 0], [1, nHeads, 1, hs]),
              ],
              2,
            ),
          );
          const v = stored(
            tf.concat(
              [
                values.slice([i, 0, 0, 0], [1, nHeads, length, hs]),
                heads(qkv, 2).slice([i, 0, 0, 0], [1, nHeads, 1, hs]),
              ],
              2,
            ),
          );
          const att = tf.softmax(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hs)));
          return tf.matMul(att, v).reshape([1, dModel]);
        });
        return Array.from(tf.concat(parts).dataSync());
      });
      tf.dispose([keys, values, qkv]);
      return { out, reference };
    } finally {
      prefill.dispose();
      cache.dispose();
    }
  }

  const near = (a: number[], b: number[]) => Math.max(...a.map((x, i) => Math.abs(x - b[i])));

  it("attends over each row's own positions, on the native kernel and on plain tfjs", () => {
    expect(fusedKernelsActive()).toBe(true); // the native kernels are built (npm run setup)
    const lengths = [0, 3, 4, 9, 13, 15, 31]; // 16 and 32 positions: whole vectors, no tail
    const native = pagedStep(lengths, 11);
    expect(near(native.out, native.reference)).toBeLessThan(1e-5);
    setFastKernelsEnabled(false);
    try {
      const plain = pagedStep(lengths, 11);
      expect(near(plain.out, plain.reference)).toBeLessThan(1e-5);
    } finally {
      setFastKernelsEnabled(true);
    }
  });

  it("keeps what rows hold when its pools grow, and reuses the blocks of rows that left", () => {
    const cache = new PagedKVCache(nLayers, nHeads, dModel, 4);
    try {
      const first = cache.allocate(3);
      expect(cache.capacity).toBe(16);
      cache.allocate(20); // grows: 16 -> 32 blocks
      expect(cache.capacity).toBe(32);
      cache.release(first);
      const again = cache.allocate(3);
      expect(new Set(again)).toEqual(new Set(first));
      expect(cache.capacity).toBe(32);
    } finally {
      cache.dispose();
    }
    // Growth in the middle of a step's rows: pagedStep's reference still holds (fresh pools each
    // time), and rows longer than one pool's first size cross blocks.
    const { out, reference } = pagedStep([70, 1], 21);
    expect(near(out, reference)).toBeLessThan(1e-5);
  });

  it("gives back the blocks of a join whose prefill could not be stored", async () => {
    const batch = new DecodeBatch(model);
    // Natively the prompt goes straight into its first row's blocks and is copied to the others';
    // on plain tfjs it is prefilled apart and stored into every row's.
    const storing = fusedKernelsActive() ? "copyPositions" : "store";
    const store = vi.spyOn(PagedKVCache.prototype, storing).mockImplementationOnce(() => {
      throw new Error("no room");
    });
    try {
      await expect(batch.add([{ prompt: ids("lost"), rows: [row(), row()] }])).rejects.toThrow(
        "no room",
      );
      expect(store).toHaveBeenCalled();
      // The batch goes on: a later request decodes, and once it is done the batch frees its
      // pools (which it refuses while any blocks are still held).
      const [[next]] = await batch.add([{ prompt: ids("next"), rows: [row({ maxNewTokens: 3 })] }]);
      await drain(batch);
      expect(next.tokens).toHaveLength(3);
      expect(batch.cacheBytes()).toBe(0);
    } finally {
      store.mockRestore();
      batch.dispose();
    }
  });

  it("decodes greedy rows of any length as generate() does, natively and on plain tfjs", async () => {
    const prompts = ["a prompt across blocks of sixteen", "hi", "third one!"];
    const greedy = row({ temperature: 0, maxNewTokens: 20 });
    const expected = await sampleTokens(
      model,
      prompts.map((p) => ids(p)),
      { maxNewTokens: 20, temperature: 0, topP: 1, seed: 0, eosId: -1, padId: 0 },
    );
    for (const fast of [true, false]) {
      setFastKernelsEnabled(fast);
      try {
        const batch = new DecodeBatch(model);
        const rows = await batch.add(
          prompts.slice(0, 2).map((p) => ({ prompt: ids(p), rows: [greedy] })),
        );
        const [[late]] = await drain(batch, 0, [{ prompt: ids(prompts[2]), rows: [greedy] }]);
        expect([rows[0][0].tokens, rows[1][0].tokens, late.tokens]).toEqual(
          expected.map((r) => r.tokens),
        );
        batch.dispose();
      } finally {
        setFastKernelsEnabled(true);
      }
    }
  });
});

describe("the fused decode layer", () => {
  /**
   * Three decode steps of two left-padded prompts on a paged cache: each step's logits, and
   * the tfjs kernels that ran. `direct`: the steps outside tfjs (GPT.decodeLogits).
   */
  async function decodeSteps(gpt: GPT, direct = false) {
    const { nLayers, nHeads, dModel } = gpt.config;
    const prompts = [
      [5, 9, 120, 33],
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
    ];
    const width = Math.max(...prompts.map((p) => p.length));
    const padLeft = prompts.map((p) => width - p.length);
    const cache = new PagedKVCache(nLayers, nHeads, dModel, 4);
    const prefill = new KVCache(nLayers);
    const logits: number[][] = [];
    try {
      const input = prompts.flatMap((p, i) => [...new Array(padLeft[i]).fill(0), ...p]);
      tf.tidy(() =>
        gpt.lastLogits(tf.tensor2d(input, [2, width], "int32"), { cache: prefill, padLeft }),
      );
      const rows = prompts.map((p) => ({
        blocks: cache.allocate(cache.blocksFor(p.length + 1)),
        length: p.length,
      }));
      cache.store(
        prefill,
        rows.map((r, i) => ({ ...r, source: i, start: padLeft[i] })),
      );
      const profile = await tf.profile(() => {
        for (let step = 0; step < 3; step++) {
          for (const r of rows)
            if (r.blocks.length * cache.blockSize <= r.length) r.blocks.push(...cache.allocate(1));
          cache.beginStep(rows);
          if (direct) {
            const out = gpt.decodeLogits(Int32Array.from([40 + step, 70 + step]), cache);
            expect(out).not.toBeNull();
            logits.push(Array.from(out as Float32Array));
          } else {
            const out = tf.tidy(() =>
              gpt.forward(tf.tensor2d([[40 + step], [70 + step]], [2, 1], "int32"), {
                paged: cache,
              }),
            );
            logits.push(Array.from(out.dataSync()));
            out.dispose();
          }
          cache.endStep();
          for (const r of rows) r.length++;
        }
      });
      for (const r of rows) cache.release(r.blocks);
      return { logits: logits.flat(), kernels: new Set(profile.kernelNames) };
    } finally {
      prefill.dispose();
      cache.dispose();
    }
  }

  it("gives a packed model's decode steps the logits of the op-by-op path, for each norm and activation", async () => {
    expect(fusedKernelsActive()).toBe(true);
    const variants = [
      {},
      { norm: "rmsnorm" as const, activation: "relu" as const, tiedEmbeddings: false },
      // Rows of 42 and 168 values: the norms' and GELU's vector loops leave a remainder.
      { dModel: 42, nHeads: 3 },
    ];
    for (const variant of variants) {
      const gpt = new GPT({ ...config, ...variant }, 13);
      try {
        // Weights of order one, norms and biases away from 1 and 0: every term shows in the logits.
        const { tensors } = decodeSafetensors(await saveModel(gpt));
        for (const [name, t] of tensors) {
          const wave = (i: number) => Math.sin(7 * i + name.length);
          if (name.endsWith(".bias")) t.data = t.data.map((_, i) => 0.1 * wave(i));
          else if (/ln_\d|ln_f/.test(name)) t.data = t.data.map((_, i) => 1 + 0.3 * wave(i));
          else t.data = t.data.map((v) => 20 * v);
        }
        loadWeights(gpt, tensors);
        gpt.packForDecoding();
        const fused = await decodeSteps(gpt);
        expect(fused.kernels).toContain("ChatrlDecodeLayer");
        // The same step outside tfjs: no tfjs kernel at all, the same logits (the final RMS norm
        // is tfjs's ops on one path and the native loop on the other: float32 sums in another order).
        const direct = await decodeSteps(gpt, true);
        expect(direct.kernels.size).toBe(0);
        const gap = Math.max(...direct.logits.map((x, i) => Math.abs(x - fused.logits[i])));
        if (!variant.norm) expect(gap).toBe(0);
        else expect(gap / Math.max(...fused.logits.map(Math.abs))).toBeLessThan(1e-5);
        gpt.unpackDecoding();
        await expect(decodeSteps(gpt, true)).rejects.toThrow(); // not packed: decodeLogits gives null
        const plain = await decodeSteps(gpt);
        expect(plain.kernels).not.toContain("ChatrlDecodeLayer");
        const diff = Math.max(...fused.logits.map((x, i) => Math.abs(x - plain.logits[i])));
        const scale = Math.max(...plain.logits.map(Math.abs));
        expect(diff / scale).toBeLessThan(3e-5); // float32 sums in another order: ~3e-6
        // Served in bfloat16 (prefill and steps): the same logits to bfloat16's ~3 digits.
        gpt.packForDecoding("bfloat16");
        const half = await decodeSteps(gpt);
        expect(half.kernels).toContain("ChatrlDecodeLayer");
        const norm = (v: number[]) => Math.hypot(...v);
        const error = norm(half.logits.map((x, i) => x - plain.logits[i])) / norm(plain.logits);
        expect(error).toBeGreaterThan(1e-4);
        expect(error).toBeLessThan(3e-2);
        gpt.unpackDecoding();
      } finally {
        gpt.dispose();
      }
    }
  });

  it("refuses a step whose rows fall outside their block table, writing nothing", () => {
    const native = loadNativeKernels();
    if (!native) throw new Error("the native kernels are not built (npm run setup)");
    const [c, nh, hidden, blockSize] = [32, 2, 128, 4];
    const f = (n: number) => new Float32Array(n).fill(0.5);
    const panels = (n: number) => Math.ceil(n / 64) * 64;
    const kPool = new Uint16Array(8 * c);
    const vPool = new Uint16Array(8 * c);
    // Two rows of one block each: the first fits, the second's next position (4) does not.
    const table = Int32Array.from([0, 1]);
    const lengths = Int32Array.from([1, 4]);
    expect(() =>
      native.pagedAttention(
        f(2 * 3 * c),
        kPool,
        vPool,
        table,
        lengths,
        f(2 * c),
        2,
        nh,
        c / nh,
        blockSize,
        1,
        8,
        1,
      ),
    ).toThrow(/pagedAttention: a row's length is outside its block table/);
    expect(() =>
      native.decodeLayer(
        f(2 * c),
        f(2 * c),
        f(c),
        f(c),
        f(c * panels(3 * c)),
        f(3 * c),
        f(c * panels(c)),
        f(c),
        f(c),
        f(c),
        f(c * panels(hidden)),
        f(hidden),
        f(hidden * panels(c)),
        f(c),
        kPool,
        vPool,
        table,
        lengths,
        2,
        c,
        nh,
        hidden,
        blockSize,
        1,
        8,
        1,
        1e-5,
        0,
        0,
      ),
    ).toThrow(/decodeLayer: a row's length is outside its block table/);
    // The first row's key and value were not written either.
    expect(kPool.every((bits) => bits === 0) && vPool.every((bits) => bits === 0)).toBe(true);
  });
});

// The kernels registered on the wasm and cpu backends: native BatchMatMul against the backends'
// own kernels (transposes, batches, broadcasting, both thread counts), the gather gradient wasm
// lacks, the sharing Identity, and where the overrides must not go.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  installFastKernels,
  nativeThreads,
  nativeBf16Kernel,
  packWeight,
  setFastKernelsEnabled,
  setNativeBf16Kernel,
  setNativeThreads,
} from "../src/kernels/index.ts";
import { transposingBatchMatMul } from "../src/kernels/matmul.ts";
import { loadAddon } from "../src/kernels/native.ts";
import {
  adamwUpdate,
  causalAttention,
  crossEntropy,
  gelu,
  layerNorm,
  linear,
  linearPacked,
  mergeHeads,
  splitHeads,
} from "../src/ops.ts";
import { GPT, initBackend, MODEL_PRESETS, tf } from "../src/index";
import { PagedKVCache } from "../src/paged-kv-cache.ts";

let defaultThreads = 1;

beforeAll(async () => {
  await initBackend("wasm");
  defaultThreads = nativeThreads();
});

afterEach(() => setFastKernelsEnabled(true));

afterAll(async () => {
  setNativeThreads(defaultThreads);
  await tf.setBackend("wasm");
});

function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

const rand = (shape: number[], seed: number) =>
  tf.tensor(
    values(
      shape.reduce((a, b) => a * b, 1),
      seed,
    ),
    shape,
  );

/** Result of f with the native kernels and with the backend's own, as flat arrays. */
function bothWays(f: () => tf.Tensor): [Float32Array, Float32Array, number[]] {
  const run = (fast: boolean) => {
    setFastKernelsEnabled(fast);
    const t = f();
    const out: [Float32Array, number[]] = [t.dataSync() as Float32Array, t.shape];
    t.dispose();
    return out;
  };
  const [fast, shape] = run(true);
  const [plain, plainShape] = run(false);
  setFastKernelsEnabled(true);
  expect(shape).toEqual(plainShape);
  return [fast, plain, shape];
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i] - b[i]) / (1 + Math.abs(b[i])));
  }
  return worst;
}

const MATMULS: { name: string; a: number[]; b: number[]; ta?: boolean; tb?: boolean }[] = [
  { name: "2-D", a: [5, 7], b: [7, 3] },
  { name: "2-D, transposeA", a: [7, 5], b: [7, 3], ta: true },
  { name: "2-D, transposeB", a: [5, 7], b: [3, 7], tb: true },
  { name: "2-D, both transposed", a: [7, 5], b: [3, 7], ta: true, tb: true },
  { name: "batched 3-D", a: [4, 5, 6], b: [4, 6, 2] },
  {
    name: "batched 4-D with transposeB (attention scores)",
    a: [2, 3, 5, 4],
    b: [2, 3, 6, 4],
    tb: true,
  },
  { name: "a batch of 1 broadcast over b's batch", a: [1, 5, 6], b: [3, 6, 2] },
  { name: "a 2-D right side broadcast over a 4-D left", a: [2, 3, 5, 6], b: [6, 2] },
  { name: "general broadcasting (left to the backend)", a: [2, 1, 3, 4], b: [1, 3, 4, 5] },
  { name: "an empty inner dimension", a: [3, 0], b: [0, 4] },
];

describe.each(["wasm", "cpu"])("kernels on the %s backend", (backend) => {
  beforeAll(async () => {
    await tf.setBackend(backend);
    expect(installFastKernels(backend).native).toBe(true);
  });

  it("runs a packed model's decode step outside tfjs as its kernels do through tfjs", () => {
    const gpt = new GPT({ ...MODEL_PRESETS.tiny, contextLength: 32 }, 3);
    gpt.packForDecoding();
    const { nLayers, nHeads, dModel } = gpt.config;
    const [direct, viaTfjs] = [true, false].map((outside) => {
      const cache = new PagedKVCache(nLayers, nHeads, dModel, 4);
      const rows = [
        { blocks: cache.allocate(2), length: 5 },
        { blocks: cache.allocate(1), length: 0 },
      ];
      cache.beginStep(rows);
      try {
        if (outside) return Array.from(gpt.decodeLogits(Int32Array.from([7, 9]), cache) ?? []);
        return tf.tidy(() =>
          Array.from(
            gpt.forward(tf.tensor2d([[7], [9]], [2, 1], "int32"), { paged: cache }).dataSync(),
          ),
        );
      } finally {
        cache.endStep();
        for (const r of rows) cache.release(r.blocks);
        cache.dispose();
      }
    });
    expect(direct).toHaveLength(2 * gpt.config.vocabSize);
    expect(direct).toEqual(viaTfjs);
    // A token outside the vocabulary is refused, not read from past the embedding.
    const cache = new PagedKVCache(nLayers, nHeads, dModel, 4);
    const row = { blocks: cache.allocate(1), length: 0 };
    cache.beginStep([row]);
    expect(() => gpt.decodeLogits(Int32Array.from([gpt.config.vocabSize]), cache)).toThrow(
      /outside the vocabulary/,
    );
    cache.endStep();
    cache.release(row.blocks);
    cache.dispose();
    gpt.dispose();
  });

  for (const { name, a, b, ta = false, tb = false } of MATMULS) {
    it(`multiplies like the backend's own matMul: ${name}`, () => {
      const x = rand(a, 1);
      const y = rand(b, 2);
      const [fast, plain] = bothWays(() => tf.matMul(x, y, ta, tb));
      expect(maxRelDiff(fast, plain)).toBeLessThan(1e-5);
      tf.dispose([x, y]);
    });
  }

  it("gives the same results on one thread and on two", () => {
    // Large enough (8M multiply-adds, 256K elements) that the two-thread paths are taken.
    const x = rand([256, 256], 3);
    const w = rand([256, 300], 4);
    const q = rand([2, 16, 64, 64], 5) as tf.Tensor4D;
    const kv = rand([2, 16, 64, 64], 6) as tf.Tensor4D;
    const g = rand([300], 7) as tf.Tensor1D;
    const batched = [rand([64, 64, 64], 8), rand([64, 64, 64], 9)];
    const rows = rand([1024, 300], 10);
    const logits = rand([1100, 256], 11) as tf.Tensor2D;
    const targets = tf.tensor1d(
      Array.from({ length: 1100 }, (_, i) => (i % 7 === 0 ? -1 : (i * 31) % 256)),
      "int32",
    );
    const qkv = rand([8, 128, 768], 12) as tf.Tensor3D;
    const compute = () => {
      const out: Float32Array[] = [];
      tf.tidy(() => {
        const attentionGrads = tf.grads((qq: tf.Tensor, kk: tf.Tensor) =>
          tf.sum(causalAttention(qq as tf.Tensor4D, kk as tf.Tensor4D, kv)),
        )([q, kv]);
        const normGrads = tf.grads((r: tf.Tensor, gg: tf.Tensor) =>
          tf.sum(tf.square(layerNorm(r, gg as tf.Tensor1D, g, 1e-5))),
        )([rows, g]);
        const lossGrads = tf.grads((l: tf.Tensor) =>
          tf.sum(crossEntropy(l as tf.Tensor2D, targets)),
        )([logits]);
        const geluGrads = tf.grads((r: tf.Tensor) => tf.sum(tf.square(gelu(r))))([rows]);
        const headGrads = tf.grads((t: tf.Tensor) =>
          tf.sum(tf.square(mergeHeads(splitHeads(t as tf.Tensor3D, 4, 3)[1]))),
        )([qkv]);
        const [p, m, v] = adamwUpdate(rows, rows, tf.square(rows), rows, {
          lr: 0.1,
          beta1: 0.9,
          beta2: 0.95,
          eps: 1e-8,
          weightDecay: 0.01,
          step: 3,
        });
        const results = [
          linear(x, w as tf.Tensor2D),
          layerNorm(rows, g, g, 1e-5),
          gelu(rows),
          crossEntropy(logits, targets),
          tf.matMul(batched[0], batched[1], false, true),
          // split by rows (tall results) and by columns (wide ones), with each transpose
          tf.matMul(tf.concat([x, x], 0), x),
          tf.matMul(w, x, true, false),
          tf.matMul(x, w, true, false),
          tf.matMul(x, tf.transpose(w), false, true),
          ...attentionGrads,
          ...normGrads,
          ...lossGrads,
          ...geluGrads,
          ...headGrads,
          p,
          m,
          v,
        ];
        for (const t of results) out.push(t.dataSync() as Float32Array);
      });
      return out;
    };
    setNativeThreads(1);
    const one = compute();
    setNativeThreads(2);
    const two = compute();
    setNativeThreads(defaultThreads);
    one.forEach((r, i) => {
      expect(maxRelDiff(two[i], r), `result ${i}`).toBeLessThan(1e-5);
    });
    tf.dispose([x, w, q, kv, g, ...batched, rows, logits, targets, qkv]);
  });

  it.each([
    ["one row", 1, 256, 768, true],
    ["a panel and a tail", 3, 33, 100, true],
    ["16 rows, wide input", 16, 1024, 256, true],
    ["odd rows and columns, no bias", 7, 17, 65, false],
    ["more rows than a register block", 20, 64, 64, true],
  ] as const)("multiplies on packed weights like linear: %s", (_, rows, inDim, outDim, bias) => {
    const x = rand([rows, inDim], 21);
    const w = rand([inDim, outDim], 22) as tf.Tensor2D;
    const b = bias ? (rand([outDim], 23) as tf.Tensor1D) : undefined;
    const packed = packWeight(w, "float32") as Float32Array;
    expect(packed.length).toBe(Math.ceil(outDim / 64) * inDim * 64);
    for (const threads of [1, 2]) {
      setNativeThreads(threads);
      const got = tf.tidy(() => linearPacked(x, packed, outDim, b).dataSync() as Float32Array);
      const want = tf.tidy(() => tf.add(tf.matMul(x, w), b ?? 0).dataSync() as Float32Array);
      expect(maxRelDiff(got, want), `${threads} threads`).toBeLessThan(1e-4);
    }
    setNativeThreads(defaultThreads);
    tf.dispose([x, w, ...(b ? [b] : [])]);
  });

  /** float32 values rounded to the nearest bfloat16 (ties to even), still as float32. */
  function roundToBf16(t: tf.Tensor): tf.Tensor {
    const v = Float32Array.from(t.dataSync());
    const bits = new Uint32Array(v.buffer);
    for (let i = 0; i < bits.length; i++)
      bits[i] = (((bits[i] + 0x7fff + ((bits[i] >>> 16) & 1)) >>> 16) << 16) >>> 0;
    return tf.tensor(v, t.shape);
  }

  it.each([
    ["one row", 1, 256, 768, true],
    ["tails of both tiles (in 40, out 70)", 3, 40, 70, true],
    ["17 rows (a second row tile), wide input", 17, 1024, 256, true],
    ["odd rows and columns, no bias", 7, 17, 65, false],
  ] as const)(
    "multiplies on bfloat16 weights like linear on bfloat16-rounded operands: %s",
    (_, rows, inDim, outDim, bias) => {
      const x = rand([rows, inDim], 31);
      const w = rand([inDim, outDim], 32) as tf.Tensor2D;
      const b = bias ? (rand([outDim], 33) as tf.Tensor1D) : undefined;
      const packed = packWeight(w, "bfloat16") as Uint16Array;
      expect(packed).toBeInstanceOf(Uint16Array);
      expect(packed.length).toBe(Math.ceil(outDim / 16) * Math.ceil(inDim / 32) * 512);
      const want = tf.tidy(
        () => tf.add(tf.matMul(roundToBf16(x), roundToBf16(w)), b ?? 0).dataSync() as Float32Array,
      );
      // Rounded operands, products summed in float32: only the order of the sums differs.
      // Every loop this CPU has: AMX, AVX-512 BF16, the plain one.
      const best = nativeBf16Kernel();
      const kernels = (["amx", "avx512bf16", "plain"] as const).slice(
        ["amx", "avx512bf16", "plain"].indexOf(best),
      );
      for (const kernel of kernels)
        for (const threads of [1, 2]) {
          expect(setNativeBf16Kernel(kernel)).toBe(kernel);
          setNativeThreads(threads);
          const got = tf.tidy(() => linearPacked(x, packed, outDim, b).dataSync() as Float32Array);
          expect(maxRelDiff(got, want), `${kernel}, ${threads} threads`).toBeLessThan(2e-5);
          // A row's numbers do not depend on the rows beside it.
          const alone = tf.tidy(
            () =>
              linearPacked(
                x.slice([rows - 1, 0], [1, inDim]),
                packed,
                outDim,
                b,
              ).dataSync() as Float32Array,
          );
          expect(Array.from(alone)).toEqual(Array.from(got.subarray((rows - 1) * outDim)));
        }
      setNativeBf16Kernel(best);
      setNativeThreads(defaultThreads);
      // Not the float32 product: the rounding is there, about 3 significant digits of the whole.
      const exact = tf.tidy(() => tf.add(tf.matMul(x, w), b ?? 0).dataSync() as Float32Array);
      const got = tf.tidy(() => linearPacked(x, packed, outDim, b).dataSync() as Float32Array);
      const norm = (v: Float32Array) => Math.hypot(...v);
      const relative = norm(got.map((g, i) => g - exact[i])) / norm(exact);
      expect(relative).toBeGreaterThan(1e-4);
      expect(relative).toBeLessThan(1e-2);
      tf.dispose([x, w, ...(b ? [b] : [])]);
    },
  );

  it("agrees with the plain ops for one query over 64-wide heads (the decode step's loop)", () => {
    const q = rand([3, 4, 1, 64], 14) as tf.Tensor4D;
    const k = rand([3, 4, 130, 64], 15) as tf.Tensor4D;
    const v = rand([3, 4, 130, 64], 16) as tf.Tensor4D;
    const [fast, plain] = bothWays(() => causalAttention(q, k, v));
    expect(maxRelDiff(fast, plain)).toBeLessThan(1e-5);
    tf.dispose([q, k, v]);
  });

  it("computes GELU and its gradient as the plain ops do, across its range", () => {
    // Around zero, through the bend, far into both tails, and a length the vector loop leaves a
    // remainder of.
    const values = Array.from({ length: 1031 }, (_, i) => (i - 515) / 40);
    values.push(-60, -20, -1e-6, 0, 1e-6, 20, 60);
    const x = tf.tensor1d(values);
    const dy = rand([values.length], 21);
    const [fast, plain] = bothWays(() =>
      tf.tidy(() => {
        const [dx] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(gelu(t), dy)))([x]);
        return tf.concat([gelu(x), dx]);
      }),
    );
    expect(maxRelDiff(fast, plain)).toBeLessThan(1e-5);
    // Spot values: GELU(1) = 0.8411920, GELU(-3) = -0.0036374, GELU'(0) = 0.5.
    const at = (v: number) => values.indexOf(v);
    expect(fast[at(40 / 40)]).toBeCloseTo(0.841192, 6);
    expect(fast[at(-120 / 40)]).toBeCloseTo(-0.0036374, 6);
    const slope = tf.tidy(() => tf.grad((t: tf.Tensor) => tf.sum(gelu(t)))(tf.zeros([1])));
    expect(slope.dataSync()[0]).toBeCloseTo(0.5, 6);
    tf.dispose([x, dy, slope]);
  });

  it.each([
    ["a few positions", 5, 5],
    ["more positions than one query block", 70, 70],
    ["queries continuing a cached prefix", 40, 75],
    ["one query over cached keys (a decode step)", 1, 75],
  ])(
    "agrees with the plain ops for attention and layer norm, forward and backward: %s",
    (_, tq, tk) => {
      const q = rand([2, 2, tq, 4], 11) as tf.Tensor4D;
      const k = rand([2, 2, tk, 4], 12) as tf.Tensor4D;
      const v = rand([2, 2, tk, 4], 13) as tf.Tensor4D;
      const [fast, plain] = bothWays(() =>
        tf.tidy(() => {
          const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
            tf.sum(
              tf.square(
                layerNorm(
                  causalAttention(a as tf.Tensor4D, b as tf.Tensor4D, c as tf.Tensor4D),
                  tf.ones([4]),
                  tf.zeros([4]),
                  1e-5,
                ),
              ),
            );
          return tf.concat(
            tf
              .grads(f)([q, k, v])
              .map((t) => t.flatten()),
            0,
          );
        }),
      );
      expect(maxRelDiff(fast, plain)).toBeLessThan(1e-4);
      tf.dispose([q, k, v]);
    },
  );

  it("sums embedding gradients into their rows (UnsortedSegmentSum)", () => {
    const out = tf.tidy(() =>
      tf
        .unsortedSegmentSum(
          tf.tensor2d([1, 2, 10, 20, 100, 200, 1000, 2000], [4, 2]),
          tf.tensor1d([2, 0, 2, 1], "int32"),
          3,
        )
        .arraySync(),
    );
    expect(out).toEqual([
      [10, 20],
      [1000, 2000],
      [101, 202],
    ]);
  });
});

describe("kernel registration", () => {
  beforeAll(async () => {
    await tf.setBackend("wasm");
  });

  it("lets a wasm clone share its source's memory and outlive it", () => {
    const source = tf.tensor1d([1, 2, 3]);
    const buffersBefore = tf.memory().numDataBuffers;
    const clone = tf.clone(source);
    expect(tf.memory().numDataBuffers).toBe(buffersBefore); // no copy
    source.dispose();
    expect(Array.from(clone.dataSync())).toEqual([1, 2, 3]);
    clone.dispose();
  });

  it("gathers embedding rows on wasm, and leaves other gathers to the backend", () => {
    const table = tf.tensor2d([0, 1, 10, 11, 20, 21], [3, 2]);
    const rows = tf.tidy(() =>
      tf.gather(table, tf.tensor2d([2, 0, 2, 1], [2, 2], "int32")).arraySync(),
    );
    expect(rows).toEqual([
      [
        [20, 21],
        [0, 1],
      ],
      [
        [20, 21],
        [10, 11],
      ],
    ]);
    const columns = tf.tidy(() => tf.gather(table, tf.tensor1d([1], "int32"), 1).arraySync());
    expect(columns).toEqual([[1], [11], [21]]);
    expect(() => tf.tidy(() => tf.gather(table, tf.tensor1d([3], "int32")))).toThrow(
      /index value 3/,
    );
    table.dispose();
  });

  it("without the addon, multiplies transposed operands through explicit transposes", () => {
    // The fallback kernel wasm gets when the addon is missing, tried under a test name against
    // the backend's own transposed products (native paths off on both sides).
    const name = "TestTransposingBatchMatMul";
    const own = tf.getKernel("BatchMatMul", "wasm")?.kernelFunc as tf.KernelFunc;
    const transpose = tf.getKernel("Transpose", "wasm")?.kernelFunc as tf.KernelFunc;
    tf.registerKernel({
      kernelName: name,
      backendName: "wasm",
      kernelFunc: transposingBatchMatMul(transpose, own),
    });
    setFastKernelsEnabled(false);
    const a = rand([2, 6, 5], 21);
    const b = rand([2, 4, 6], 22);
    const buffers = tf.memory().numDataBuffers;
    for (const [ta, tb, x, y] of [
      [true, false, a, rand([2, 6, 4], 23)],
      [false, true, rand([2, 5, 6], 24), b],
      [true, true, a, b],
    ] as const) {
      const got = tf.engine().runKernel(name, { a: x, b: y }, { transposeA: ta, transposeB: tb });
      const want = tf.matMul(x, y, ta, tb);
      expect((got as tf.Tensor).shape).toEqual(want.shape);
      expect(
        maxRelDiff((got as tf.Tensor).dataSync() as Float32Array, want.dataSync() as Float32Array),
      ).toBeLessThan(1e-5);
      tf.dispose([got as tf.Tensor, want]);
    }
    expect(tf.memory().numDataBuffers).toBe(buffers + 2); // the two operands made in the loop
    tf.unregisterKernel(name, "wasm");
  });

  it("registers nothing on backends whose kernels are native already (tfjs-node)", () => {
    const status = installFastKernels("tensorflow");
    expect(status.kernels).toEqual([]);
    expect(tf.getKernel("ChatrlCausalAttention", "tensorflow")).toBeUndefined();
  });

  it("reports a missing native build instead of throwing, so the engine can fall back", () => {
    const load = loadAddon("/nonexistent/chatrl_kernels.node");
    expect(load.kernels).toBeNull();
    expect(load.error).toContain("chatrl_kernels.node");
  });
});

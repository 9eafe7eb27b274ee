// The fused native paths of ops.ts (linear, causal attention, layer norm) against finite
// differences and against the plain tfjs compositions they replace, on the wasm backend.
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { installFastKernels, setFastKernelsEnabled } from "../src/kernels/index.ts";
import {
  adamwUpdate,
  causalAttention,
  crossEntropy,
  embedding,
  layerNorm,
  linear,
  mergeHeads,
  splitHeads,
} from "../src/ops.ts";
import { initBackend, tf } from "../src/index";

beforeAll(async () => {
  await initBackend("wasm");
});

afterEach(() => setFastKernelsEnabled(true));

/** Deterministic values in [-1, 1) (a small LCG), so failures reproduce. */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

function tensor(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(
    values(
      shape.reduce((a, b) => a * b, 1),
      seed,
    ),
    shape,
  );
}

type Op = (...inputs: tf.Tensor[]) => tf.Tensor;

/** sum(op(inputs) * r) for a fixed random r, so every output element carries gradient. */
function weightedSum(op: Op, inputs: tf.Tensor[]): number {
  return tf.tidy(() => {
    const y = op(...inputs);
    const r = tensor(y.shape, 99);
    return tf.sum(tf.mul(y, r)).dataSync()[0];
  });
}

function analyticGrads(op: Op, inputs: tf.Tensor[]): Float32Array[] {
  return tf.tidy(() => {
    const g = tf.grads((...xs: tf.Tensor[]) => {
      const y = op(...xs);
      return tf.sum(tf.mul(y, tensor(y.shape, 99)));
    });
    return g(inputs).map((t) => t.dataSync() as Float32Array);
  });
}

/** Central differences of weightedSum for every element of every input. */
function numericGrads(op: Op, inputs: tf.Tensor[], eps: number): Float32Array[] {
  return inputs.map((input, which) => {
    const base = input.dataSync() as Float32Array;
    const grad = new Float32Array(base.length);
    for (let i = 0; i < base.length; i++) {
      const at = (delta: number) => {
        const shifted = base.slice();
        shifted[i] += delta;
        const moved = tf.tensor(shifted, input.shape);
        const args = inputs.map((t, j) => (j === which ? moved : t));
        const value = weightedSum(op, args);
        moved.dispose();
        return value;
      };
      grad[i] = (at(eps) - at(-eps)) / (2 * eps);
    }
    return grad;
  });
}

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number) {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    const err = Math.abs(actual[i] - expected[i]) / (1 + Math.abs(expected[i]));
    worst = Math.max(worst, err);
  }
  expect(worst).toBeLessThan(tol);
}

function plain<T>(f: () => T): T {
  setFastKernelsEnabled(false);
  try {
    return f();
  } finally {
    setFastKernelsEnabled(true);
  }
}

const CASES: { name: string; op: Op; shapes: number[][] }[] = [
  {
    name: "linear with bias",
    op: (x, w, b) => linear(x, w as tf.Tensor2D, b as tf.Tensor1D),
    shapes: [[2, 3, 5], [5, 4], [4]],
  },
  {
    name: "linear without bias",
    op: (x, w) => linear(x, w as tf.Tensor2D),
    shapes: [
      [3, 5],
      [5, 6],
    ],
  },
  {
    name: "causal attention",
    op: (q, k, v) => causalAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D),
    shapes: [
      [2, 2, 4, 3],
      [2, 2, 4, 3],
      [2, 2, 4, 3],
    ],
  },
  {
    name: "causal attention continuing a cached prefix (Tq < Tk)",
    op: (q, k, v) => causalAttention(q as tf.Tensor4D, k as tf.Tensor4D, v as tf.Tensor4D),
    shapes: [
      [1, 2, 2, 3],
      [1, 2, 5, 3],
      [1, 2, 5, 3],
    ],
  },
  {
    name: "splitting q, k, v into heads",
    // the three parts side by side along the last axis, so one tensor carries all of them
    op: (x) => tf.concat(splitHeads(x as tf.Tensor3D, 2, 3), 3),
    shapes: [[2, 3, 12]],
  },
  {
    name: "merging heads",
    op: (x) => mergeHeads(x as tf.Tensor4D),
    shapes: [[2, 2, 3, 4]],
  },
  {
    name: "cross-entropy (a target of -1 and one past the vocabulary count nothing)",
    op: (logits) => crossEntropy(logits as tf.Tensor2D, tf.tensor1d([0, 3, -1, 2, 4, 1], "int32")),
    shapes: [[6, 4]],
  },
  {
    name: "layer norm",
    op: (x, g, b) => layerNorm(x, g as tf.Tensor1D, b as tf.Tensor1D, 1e-5),
    shapes: [[2, 3, 6], [6], [6]],
  },
];

describe("fused ops on the wasm backend", () => {
  it("run on the native addon (scripts/build-native.sh builds it)", () => {
    const status = installFastKernels("wasm");
    expect(status.nativeError).toBeNull();
    expect(status.native).toBe(true);
    expect(status.kernels).toEqual(
      expect.arrayContaining(["BatchMatMul", "ChatrlCausalAttention", "UnsortedSegmentSum"]),
    );
  });

  for (const { name, op, shapes } of CASES) {
    describe(name, () => {
      const make = () => shapes.map((s, i) => tensor(s, 10 + i));

      it("computes what the plain tfjs composition computes", () => {
        const inputs = make();
        const fused = tf.tidy(() => op(...inputs).dataSync());
        const reference = plain(() => tf.tidy(() => op(...inputs).dataSync()));
        expectClose(fused, reference, 1e-5);
        tf.dispose(inputs);
      });

      it("has gradients that match finite differences", () => {
        const inputs = make();
        const analytic = analyticGrads(op, inputs);
        const numeric = numericGrads(op, inputs, 1e-2);
        for (const [i, g] of analytic.entries()) expectClose(g, numeric[i], 5e-3);
        tf.dispose(inputs);
      });

      it("has gradients equal to the plain composition's", () => {
        const inputs = make();
        const fused = analyticGrads(op, inputs);
        const reference = plain(() => analyticGrads(op, inputs));
        for (const [i, g] of fused.entries()) expectClose(g, reference[i], 1e-5);
        tf.dispose(inputs);
      });
    });
  }

  it("attention gives the first query the first value exactly (the causal mask holds)", () => {
    const out = tf.tidy(() => {
      const q = tensor([1, 1, 3, 2], 1) as tf.Tensor4D;
      const k = tensor([1, 1, 3, 2], 2) as tf.Tensor4D;
      const v = tf.tensor4d([1, 2, 30, 40, 500, 600], [1, 1, 3, 2]);
      return causalAttention(q, k, v).dataSync();
    });
    expect(Array.from(out.slice(0, 2))).toEqual([1, 2]);
  });

  it("embedding gradients (the gather gradient wasm lacks) add up repeated ids", () => {
    const grad = tf.tidy(() => {
      const table = tf.zeros([4, 2]) as tf.Tensor2D;
      const ids = tf.tensor2d([1, 3, 1], [1, 3], "int32");
      const g = tf.grad((t: tf.Tensor) => tf.sum(embedding(t as tf.Tensor2D, ids)));
      return g(table).arraySync();
    });
    expect(grad).toEqual([
      [0, 0],
      [2, 2],
      [0, 0],
      [1, 1],
    ]);
  });

  it("gives the cross-entropy of a uniform prediction as log(V), and 0 for ignored rows", () => {
    const nll = tf.tidy(() =>
      crossEntropy(tf.zeros([2, 8]) as tf.Tensor2D, tf.tensor1d([5, -1], "int32")).dataSync(),
    );
    expect(nll[0]).toBeCloseTo(Math.log(8), 6);
    expect(nll[1]).toBe(0);
  });

  it("takes an AdamW step as torch does, natively and in plain tfjs alike", () => {
    const step = { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, step: 1 };
    const take = () =>
      tf.tidy(() => {
        const out = adamwUpdate(
          tf.tensor1d([1, -2]),
          tf.zeros([2]),
          tf.zeros([2]),
          tf.tensor1d([0.5, 0.25]),
          step,
        );
        return tf.stack(out).arraySync() as number[][];
      });
    const fused = take();
    const reference = plain(take);
    // m' = 0.1 g, v' = 0.05 g^2; bias-corrected mHat = g, vHat = g^2, so the update is lr * sign(g).
    const expected = [
      [1 * (1 - 0.1 * 0.01) - 0.1, -2 * (1 - 0.1 * 0.01) - 0.1],
      [0.05, 0.025],
      [0.0125, 0.003125],
    ];
    for (const result of [fused, reference]) {
      result.flat().forEach((x, i) => {
        expect(x).toBeCloseTo(expected.flat()[i], 6);
      });
    }
  });

  it("leaves no tensors behind across forward and backward passes", () => {
    const inputs = CASES.map(({ shapes }) => shapes.map((s, i) => tensor(s, 10 + i)));
    const pass = () =>
      CASES.forEach(({ op }, c) => {
        analyticGrads(op, inputs[c]);
        tf.tidy(() => {
          op(...inputs[c]);
        });
      });
    pass();
    const before = tf.memory().numTensors;
    pass();
    pass();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(inputs.flat());
  });
});

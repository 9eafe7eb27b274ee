// BatchMatMul through OpenBLAS. tfjs's own kernels are slow exactly where training spends its
// time: on the wasm backend a product with transposeA runs at ~1 GFLOP/s and one with
// transposeB at ~3 (the two products of every matMul gradient), batched 3-D products at ~2.5;
// sgemm takes the transpose flags for free and runs at 100+ GFLOP/s on this hardware.
import type * as tf from "@tensorflow/tfjs";
import type { NativeKernels } from "./native.ts";
import { dataAccess } from "./views.ts";

interface MatMulShape {
  batchA: number;
  batchB: number;
  m: number;
  n: number;
  k: number;
  outShape: number[];
}

/** The sgemm view of a tfjs BatchMatMul, or null when its batch dims need general broadcasting. */
export function matMulShape(
  aShape: number[],
  bShape: number[],
  transposeA: boolean,
  transposeB: boolean,
): MatMulShape | null {
  const ra = aShape.length;
  const rb = bShape.length;
  const m = transposeA ? aShape[ra - 1] : aShape[ra - 2];
  const k = transposeA ? aShape[ra - 2] : aShape[ra - 1];
  const kb = transposeB ? bShape[rb - 1] : bShape[rb - 2];
  const n = transposeB ? bShape[rb - 2] : bShape[rb - 1];
  if (k !== kb) {
    throw new Error(
      `Error in matMul: inner shapes (${k}) and (${kb}) of Tensors with shapes ${aShape} and ` +
        `${bShape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
    );
  }
  const outerA = aShape.slice(0, -2);
  const outerB = bShape.slice(0, -2);
  const batchA = outerA.reduce((x, y) => x * y, 1);
  const batchB = outerB.reduce((x, y) => x * y, 1);
  // Batches of equal shape pair up; a batch of 1 on one side broadcasts. Anything else
  // (e.g. [2, 1] against [1, 3]) is left to the backend's own kernel.
  const rank = Math.max(outerA.length, outerB.length);
  const pad = (s: number[]) => [...new Array(rank - s.length).fill(1), ...s];
  const pa = pad(outerA);
  const pb = pad(outerB);
  if (batchA !== 1 && batchB !== 1 && !pa.every((d, i) => d === pb[i])) return null;
  const outOuter = batchA === 1 ? pb : pa;
  return { batchA, batchB, m, n, k, outShape: [...outOuter, m, n] };
}

/** A BatchMatMul kernel for the wasm or cpu backend that calls sgemm, else `fallback`. */
export function nativeBatchMatMul(
  native: NativeKernels,
  backendName: string,
  fallback: tf.KernelFunc,
  enabled: () => boolean,
): tf.KernelFunc {
  return (args) => {
    if (!enabled()) return fallback(args);
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const shape =
      a.dtype === "float32" && b.dtype === "float32"
        ? matMulShape(a.shape, b.shape, transposeA, transposeB)
        : null;
    if (shape === null) return fallback(args);
    const access = dataAccess(backendName, args.backend);
    const out = access.alloc(shape.outShape, "float32");
    const outView = access.view(out) as Float32Array;
    if (shape.k === 0) {
      outView.fill(0);
      return out;
    }
    native.batchMatMul(
      access.view(a) as Float32Array,
      access.view(b) as Float32Array,
      outView,
      shape.batchA,
      shape.batchB,
      shape.m,
      shape.n,
      shape.k,
      transposeA,
      transposeB,
    );
    return out;
  };
}

/**
 * The wasm backend's BatchMatMul with its transpose flags replaced by explicit transposes:
 * the backend multiplies plain layouts 10-30x faster than transposed ones. For machines
 * without the native addon.
 */
export function transposingBatchMatMul(
  transposeKernel: tf.KernelFunc,
  fallback: tf.KernelFunc,
): tf.KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    if (!transposeA && !transposeB) return fallback(args);
    const backend = args.backend as unknown as { disposeData(id: tf.DataId): void };
    const swapLast = (t: tf.TensorInfo) => {
      const perm = t.shape.map((_, i) => i);
      [perm[perm.length - 2], perm[perm.length - 1]] = [
        perm[perm.length - 1],
        perm[perm.length - 2],
      ];
      return transposeKernel({
        inputs: { x: t },
        backend: args.backend,
        attrs: { perm },
      }) as tf.TensorInfo;
    };
    const aPlain = transposeA ? swapLast(a) : a;
    const bPlain = transposeB ? swapLast(b) : b;
    const out = fallback({
      ...args,
      inputs: { a: aPlain, b: bPlain },
      attrs: { ...args.attrs, transposeA: false, transposeB: false },
    });
    if (transposeA) backend.disposeData(aPlain.dataId);
    if (transposeB) backend.disposeData(bPlain.dataId);
    return out;
  };
}

// Zero-copy Float32Array views of tensor data on the two JavaScript-hosted backends, so that
// native code and hand-written loops can work on a tensor in place.
import type * as tf from "@tensorflow/tfjs";

/** What the kernels need from a backend: read an input's data, make an output and its data. */
export interface DataAccess {
  /** Views of the inputs, taken after `alloc` (allocating can move the wasm heap). */
  view(t: tf.TensorInfo): Float32Array | Int32Array;
  alloc(shape: number[], dtype: "float32" | "int32"): tf.TensorInfo;
}

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

interface CpuBackendLike {
  data: { get(dataId: unknown): { values: unknown } };
  makeTensorInfo(shape: number[], dtype: tf.DataType, values?: unknown): tf.TensorInfo;
}

// Classes, not object literals of arrow functions: a decode step takes dozens of views, and a
// bundle built with keepNames (scripts/build.ts; tsx does the same) names every such function at
// each call with Object.defineProperty, which cost a one-stream service ~7% of its main thread.
class WasmAccess implements DataAccess {
  constructor(private readonly wasm: WasmBackendLike) {}

  view(t: tf.TensorInfo): Float32Array | Int32Array {
    return this.wasm.typedArrayFromHeap(t) as Float32Array | Int32Array;
  }

  alloc(shape: number[], dtype: "float32" | "int32"): tf.TensorInfo {
    return this.wasm.makeOutput(shape, dtype);
  }
}

class CpuAccess implements DataAccess {
  constructor(private readonly cpu: CpuBackendLike) {}

  view(t: tf.TensorInfo): Float32Array | Int32Array {
    return this.cpu.data.get(t.dataId).values as Float32Array | Int32Array;
  }

  alloc(shape: number[], dtype: "float32" | "int32"): tf.TensorInfo {
    const size = shape.reduce((a, b) => a * b, 1);
    const values = dtype === "float32" ? new Float32Array(size) : new Int32Array(size);
    return this.cpu.makeTensorInfo(shape, dtype, values);
  }
}

export function dataAccess(backendName: string, backend: unknown): DataAccess {
  return backendName === "wasm"
    ? new WasmAccess(backend as WasmBackendLike)
    : new CpuAccess(backend as CpuBackendLike);
}

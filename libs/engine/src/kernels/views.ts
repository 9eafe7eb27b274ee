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

export function dataAccess(backendName: string, backend: unknown): DataAccess {
  if (backendName === "wasm") {
    const wasm = backend as WasmBackendLike;
    return {
      view: (t) => wasm.typedArrayFromHeap(t) as Float32Array | Int32Array,
      alloc: (shape, dtype) => wasm.makeOutput(shape, dtype),
    };
  }
  const cpu = backend as CpuBackendLike;
  return {
    view: (t) => cpu.data.get(t.dataId).values as Float32Array | Int32Array,
    alloc: (shape, dtype) => {
      const size = shape.reduce((a, b) => a * b, 1);
      const values = dtype === "float32" ? new Float32Array(size) : new Int32Array(size);
      return cpu.makeTensorInfo(shape, dtype, values);
    },
  };
}

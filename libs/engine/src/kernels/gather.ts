// GatherV2 along the first axis (embedding lookups) for the wasm backend: row copies with
// TypedArray.set, several times faster than the backend's element-wise gather. Other gathers
// go to the backend's own kernel.
import type * as tf from "@tensorflow/tfjs";
import { dataAccess } from "./views.ts";

export function rowGather(backendName: string, fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const { axis, batchDims } = args.attrs as { axis: number; batchDims: number };
    if (x.dtype !== "float32" || indices.dtype !== "int32" || axis !== 0 || batchDims !== 0) {
      return fallback(args);
    }
    const rows = x.shape[0];
    const width = x.shape.slice(1).reduce((a, b) => a * b, 1);
    const io = dataAccess(backendName, args.backend);
    const out = io.alloc([...indices.shape, ...x.shape.slice(1)], "float32");
    const dst = io.view(out) as Float32Array;
    const src = io.view(x) as Float32Array;
    const ids = io.view(indices) as Int32Array;
    for (let i = 0; i < ids.length; i++) {
      const row = ids[i];
      if (row < 0 || row >= rows) {
        throw new Error(`GatherV2: the index value ${row} is not in [0, ${rows - 1}]`);
      }
      dst.set(src.subarray(row * width, (row + 1) * width), i * width);
    }
    return out;
  };
}

// UnsortedSegmentSum for the wasm backend, which lacks it: the gradient of tf.gather (and so of
// every embedding lookup) needs it. A plain loop over the wasm heap; the cpu backend has its own.
import type * as tf from "@tensorflow/tfjs";
import { dataAccess } from "./views.ts";

export function unsortedSegmentSum(backendName: string): tf.KernelFunc {
  return (args) => {
    const { x, segmentIds } = args.inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
    const { numSegments } = args.attrs as { numSegments: number };
    if (x.dtype !== "float32" && x.dtype !== "int32") {
      throw new Error(`UnsortedSegmentSum: dtype ${x.dtype} is not supported`);
    }
    const segmentCount = segmentIds.shape.reduce((p, d) => p * d, 1);
    const inner = x.shape.slice(segmentIds.shape.length).reduce((p, d) => p * d, 1);
    const access = dataAccess(backendName, args.backend);
    const out = access.alloc([numSegments, ...x.shape.slice(segmentIds.shape.length)], x.dtype);
    const o = access.view(out);
    const xs = access.view(x);
    const ids = access.view(segmentIds);
    o.fill(0);
    for (let i = 0; i < segmentCount; i++) {
      const seg = ids[i];
      if (seg < 0 || seg >= numSegments) continue; // TensorFlow drops out-of-range ids
      const src = i * inner;
      const dst = seg * inner;
      for (let j = 0; j < inner; j++) o[dst + j] += xs[src + j];
    }
    return out;
  };
}

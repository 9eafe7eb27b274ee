// Identity (tf.clone, and every tensor a custom gradient saves) for the wasm backend, whose own
// kernel copies the data. Tensors are immutable, so the clone can share the input's memory the
// way the wasm Reshape kernel already does.
import type * as tf from "@tensorflow/tfjs";

interface RefCounted {
  incRef(dataId: tf.DataId): void;
}

export function sharedIdentity(fallback: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === "string") return fallback(args);
    (args.backend as unknown as RefCounted).incRef(x.dataId);
    return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
  };
}

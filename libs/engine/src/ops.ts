// The hot operations of the transformer, behind small named functions so that speed work
// (fast transposes, custom gradients, kernels a backend lacks) stays out of the model code.
// Each returns a tensor its caller owns; call them inside tf.tidy.
import * as tf from "@tensorflow/tfjs";

/** y = x @ w + b.  x: [..., in], w: [in, out] (GPT-2 Conv1D layout), b: [out] -> [..., out] */
export function linear(x: tf.Tensor, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor {
  const inDim = w.shape[0];
  const outDim = w.shape[1];
  const lead = x.shape.slice(0, -1);
  const y2 = tf.matMul(x.reshape([-1, inDim]) as tf.Tensor2D, w);
  const y = b ? tf.add(y2, b) : y2;
  return y.reshape([...lead, outDim]);
}

/** Rows of `table` picked by integer `ids`. table: [V, C], ids: [...] int32 -> [..., C] */
export function embedding(table: tf.Tensor2D, ids: tf.Tensor): tf.Tensor {
  const flat = tf.gather(table, ids.reshape([-1]));
  return flat.reshape([...ids.shape, table.shape[1]]);
}

/**
 * Causal scaled dot-product attention.
 * q: [B, nh, Tq, hs], k, v: [B, nh, Tk, hs] -> [B, nh, Tq, hs].
 * Query i attends to keys 0..(Tk - Tq + i), so a query block that continues a cached prefix
 * (Tk > Tq) sees the whole prefix.
 */
export function causalAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D): tf.Tensor4D {
  const [, , tq, hs] = q.shape;
  const tk = k.shape[2];
  const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hs)); // [B, nh, Tq, Tk]
  const mask = causalMask(tq, tk); // [Tq, Tk], 0 where allowed, -1e9 where not
  const att = tf.softmax(tf.add(scores, mask));
  return tf.matMul(att, v) as tf.Tensor4D;
}

function causalMask(tq: number, tk: number): tf.Tensor2D {
  const offset = tk - tq;
  const rows = tf.range(0, tq, 1, "int32").reshape([tq, 1]);
  const cols = tf.range(0, tk, 1, "int32").reshape([1, tk]);
  const allowed = tf.lessEqual(cols, tf.add(rows, offset));
  return tf.where(allowed, tf.zeros([tq, tk]), tf.fill([tq, tk], -1e9)) as tf.Tensor2D;
}

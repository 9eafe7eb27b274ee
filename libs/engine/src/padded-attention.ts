// Causal attention for a batch of left-padded sequences (batched generation of prompts of
// different lengths). A plain version; ./ops holds the fast unpadded one used in training.
import * as tf from "@tensorflow/tfjs";

/**
 * q: [B, nh, Tq, hs], k, v: [B, nh, Tk, hs] -> [B, nh, Tq, hs].
 * Query i attends to keys 0..(Tk - Tq + i), except the first padLeft[b] keys of row b.
 */
export function paddedCausalAttention(
  q: tf.Tensor4D,
  k: tf.Tensor4D,
  v: tf.Tensor4D,
  padLeft: readonly number[],
): tf.Tensor4D {
  const [batch, , tq, hs] = q.shape;
  const tk = k.shape[2];
  if (padLeft.length !== batch)
    throw new Error(`padLeft has ${padLeft.length} entries for a batch of ${batch}`);
  const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hs)); // [B, nh, Tq, Tk]
  const rows = tf.range(0, tq, 1, "int32").reshape([1, 1, tq, 1]);
  const cols = tf.range(0, tk, 1, "int32").reshape([1, 1, 1, tk]);
  const firstReal = tf.tensor1d(Array.from(padLeft), "int32").reshape([batch, 1, 1, 1]);
  const allowed = tf.logicalAnd(
    tf.lessEqual(cols, tf.add(rows, tk - tq)),
    tf.greaterEqual(cols, firstReal),
  ); // [B, 1, Tq, Tk]
  const bias = tf.mul(tf.sub(1, tf.cast(allowed, "float32")), -1e9); // 0 where allowed, -1e9 where not
  const att = tf.softmax(tf.add(scores, bias));
  return tf.matMul(att, v) as tf.Tensor4D;
}

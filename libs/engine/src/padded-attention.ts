// Causal attention for a batch of left-padded sequences (batched generation of prompts of
// different lengths). A plain version; ./ops holds the fast unpadded one used in training.
import * as tf from "@tensorflow/tfjs";
import { fusedKernelsActive } from "./kernels/index.ts";
import { causalAttention } from "./ops";

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
  if (fusedKernelsActive() && !tf.engine().isTapeOn()) {
    // No row padded (a prompt prefilled alone): plain causal attention on the fused kernel.
    if (padLeft.every((n) => n === 0)) return causalAttention(q, k, v);
  }
  const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hs)); // [B, nh, Tq, Tk]
  // The mask is built in JS: one upload instead of a handful of small ops per layer and token.
  const bias = new Float32Array(batch * tq * tk); // 0 where allowed, -1e9 where not
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < tq; i++) {
      const row = (b * tq + i) * tk;
      const lastAllowed = tk - tq + i;
      for (let j = 0; j < tk; j++) if (j < padLeft[b] || j > lastAllowed) bias[row + j] = -1e9;
    }
  }
  const att = tf.softmax(tf.add(scores, tf.tensor4d(bias, [batch, 1, tq, tk])));
  return tf.matMul(att, v) as tf.Tensor4D;
}

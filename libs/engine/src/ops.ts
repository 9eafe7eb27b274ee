// The hot operations of the transformer, behind small named functions so that speed work
// (fast transposes, custom gradients, kernels a backend lacks) stays out of the model code.
// Each returns a tensor its caller owns; call them inside tf.tidy.
//
// On the wasm and cpu backends with the native addon built (scripts/build-native.sh), linear,
// causalAttention, layerNorm, gelu, splitHeads/mergeHeads, crossEntropy and adamwUpdate run as fused
// OpenBLAS/C++ kernels with hand-written gradients (./kernels, docs/decisions/0004); everywhere
// else, and after setFastKernelsEnabled(false), they are the plain tfjs compositions below, which
// the tests hold the fused ones to.
import * as tf from "@tensorflow/tfjs";
import { FUSED, fusedKernelsActive, type PackedWeight, partName } from "./kernels/index.ts";

/** y = x @ w + b.  x: [..., in], w: [in, out] (GPT-2 Conv1D layout), b: [out] -> [..., out] */
export function linear(x: tf.Tensor, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor {
  const inDim = w.shape[0];
  const outDim = w.shape[1];
  const lead = x.shape.slice(0, -1);
  const x2 = x.reshape([-1, inDim]) as tf.Tensor2D;
  const fused = fusedKernelsActive() && x.dtype === "float32";
  let y2: tf.Tensor;
  if (fused && !recording())
    y2 = run(FUSED.linear, b ? { x: x2, w, bias: b } : { x: x2, w }) as tf.Tensor;
  else if (fused) y2 = b ? fusedLinearBias(x2, w, b) : fusedLinearNoBias(x2, w);
  else y2 = b ? tf.add(tf.matMul(x2, w), b) : tf.matMul(x2, w);
  return y2.reshape([...lead, outDim]);
}

/**
 * y = x @ w + b for a decode step, with w packed by packWeight (kernels/index.ts): the native
 * kernel for few rows. x: [..., in], b: [out] -> [..., out]. Inference only (no gradient).
 */
export function linearPacked(
  x: tf.Tensor,
  packed: PackedWeight,
  outDim: number,
  b?: tf.Tensor1D,
): tf.Tensor {
  const lead = x.shape.slice(0, -1);
  const x2 = x.reshape([-1, x.shape[x.shape.length - 1]]);
  const attrs = { packed, outDim } as unknown as tf.NamedAttrMap;
  const y2 = run(FUSED.linearPanels, b ? { x: x2, bias: b } : { x: x2 }, attrs) as tf.Tensor;
  return y2.reshape([...lead, outDim]);
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
  if (fusedKernelsActive() && q.dtype === "float32") {
    if (recording()) return fusedAttention(q, k, v) as tf.Tensor4D;
    const scale = 1 / Math.sqrt(q.shape[3]);
    const [out, probs] = run(FUSED.attention, { q, k, v }, { scale }) as tf.Tensor[];
    probs.dispose(); // kept only for a backward pass
    return out as tf.Tensor4D;
  }
  const [, , tq, hs] = q.shape;
  const tk = k.shape[2];
  const scores = tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(hs)); // [B, nh, Tq, Tk]
  const mask = causalMask(tq, tk); // [Tq, Tk], 0 where allowed, -1e9 where not
  const att = tf.softmax(tf.add(scores, mask));
  return tf.matMul(att, v) as tf.Tensor4D;
}

/**
 * Layer normalization over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta.
 * x: [..., C], gamma, beta: [C] -> [..., C]
 */
export function layerNorm(
  x: tf.Tensor,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  eps: number,
): tf.Tensor {
  if (fusedKernelsActive() && x.dtype === "float32") {
    if (recording()) return fusedLayerNorm(x, gamma, beta, eps);
    const [y, mean, rstd] = run(FUSED.layerNorm, { x, gamma, beta }, { eps }) as tf.Tensor[];
    tf.dispose([mean, rstd]); // kept only for a backward pass
    return y;
  }
  const { mean, variance } = tf.moments(x, -1, true);
  const normalized = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
  return tf.add(tf.mul(normalized, gamma), beta);
}

/** GPT-2's "gelu_new": the tanh approximation of GELU, elementwise. */
export function gelu(x: tf.Tensor): tf.Tensor {
  if (fusedKernelsActive() && x.dtype === "float32") {
    return recording() ? fusedGelu(x) : (run(FUSED.gelu, { x }) as tf.Tensor);
  }
  const cube = tf.mul(tf.mul(x, x), x); // cheaper than tf.pow on every backend
  const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, cube)));
  return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
}

/**
 * Splits a projection into attention heads: [B, T, parts * C] -> parts x [B, nh, T, hs], with
 * C = nh * hs (parts = 3 for GPT-2's fused q, k, v projection).
 */
export function splitHeads(x: tf.Tensor3D, heads: number, parts = 1): tf.Tensor4D[] {
  if (fusedKernelsActive() && x.dtype === "float32") {
    return [run(FUSED.splitHeads, { x }, { heads, parts })].flat() as tf.Tensor4D[];
  }
  const [batch, time, width] = x.shape;
  const hs = width / parts / heads;
  return tf
    .split(x, parts, -1)
    .map((p) => p.reshape([batch, time, heads, hs]).transpose([0, 2, 1, 3]) as tf.Tensor4D);
}

/** The inverse of splitHeads for one part: [B, nh, T, hs] -> [B, T, nh * hs]. */
export function mergeHeads(x: tf.Tensor4D): tf.Tensor3D {
  const [batch, heads, time, hs] = x.shape;
  if (fusedKernelsActive() && x.dtype === "float32") {
    return run(FUSED.mergeHeads, { [partName(0)]: x }, { heads, parts: 1 }) as tf.Tensor3D;
  }
  return x.transpose([0, 2, 1, 3]).reshape([batch, time, heads * hs]) as tf.Tensor3D;
}

/**
 * Cross-entropy of integer targets under softmax(logits), one value per row:
 * logits: [N, V], targets: [N] int32 -> nll [N]. A target outside 0..V-1 counts zero loss (and
 * gets no gradient), so padding can be marked with -1.
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  if (fusedKernelsActive() && logits.dtype === "float32" && targets.dtype === "int32") {
    return fusedCrossEntropy(logits, targets) as tf.Tensor1D;
  }
  // (oneHot as int32, then cast: the wasm backend's float32 OneHot writes integer bits.)
  const onehot = tf.cast(tf.oneHot(targets, logits.shape[1]), "float32");
  return tf.neg(tf.sum(tf.mul(tf.logSoftmax(logits), onehot), -1)) as tf.Tensor1D;
}

export type AdamWStep = {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay of this tensor (0 for biases and norm gains). */
  weightDecay: number;
  /** 1-based step number t, for the bias corrections 1 - beta^t. */
  step: number;
};

/**
 * One AdamW step of one weight (torch.optim.AdamW's arithmetic):
 * m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2, mHat = m' / (1 - b1^t), vHat = v' / (1 - b2^t),
 * p' = p (1 - lr wd) - lr mHat / (sqrt(vHat) + eps). Returns new [p', m', v'] for the caller to
 * assign; one native pass over the four tensors instead of a dozen tfjs ops.
 */
export function adamwUpdate(
  param: tf.Tensor,
  m: tf.Tensor,
  v: tf.Tensor,
  grad: tf.Tensor,
  s: AdamWStep,
): [tf.Tensor, tf.Tensor, tf.Tensor] {
  const bc1 = 1 - s.beta1 ** s.step;
  const bc2 = 1 - s.beta2 ** s.step;
  if (fusedKernelsActive() && grad.dtype === "float32") {
    const attrs = { lr: s.lr, beta1: s.beta1, beta2: s.beta2, eps: s.eps, bc1, bc2 };
    const out = run(
      FUSED.adamw,
      { p: param, m, v, g: grad },
      { ...attrs, weightDecay: s.weightDecay },
    );
    return out as [tf.Tensor, tf.Tensor, tf.Tensor];
  }
  const m2 = tf.add(tf.mul(m, s.beta1), tf.mul(grad, 1 - s.beta1));
  const v2 = tf.add(tf.mul(v, s.beta2), tf.mul(tf.square(grad), 1 - s.beta2));
  const denom = tf.add(tf.div(tf.sqrt(v2), Math.sqrt(bc2)), s.eps);
  const update = tf.div(m2, denom).mul(s.lr / bc1);
  const decayed = s.weightDecay > 0 ? tf.mul(param, 1 - s.lr * s.weightDecay) : param;
  return [tf.sub(decayed, update), m2, v2];
}

function causalMask(tq: number, tk: number): tf.Tensor2D {
  const offset = tk - tq;
  const rows = tf.range(0, tq, 1, "int32").reshape([tq, 1]);
  const cols = tf.range(0, tk, 1, "int32").reshape([1, tk]);
  const allowed = tf.lessEqual(cols, tf.add(rows, offset));
  return tf.where(allowed, tf.zeros([tq, tk]), tf.fill([tq, tk], -1e9)) as tf.Tensor2D;
}

// ---- fused paths: one native kernel forward, one backward (kernels/fused.ts) ----

function run(kernel: string, inputs: tf.NamedTensorMap, attrs: tf.NamedAttrMap = {}) {
  return tf.engine().runKernel(kernel, inputs, attrs) as tf.Tensor | tf.Tensor[];
}

/** Whether a gradient tape is recording; without one (inference) the fused ops skip customGrad. */
function recording(): boolean {
  return tf.engine().isTapeOn();
}

type Saver = (tensors: tf.Tensor[]) => void;

// The gradient of x @ w is two more products (sgemm takes the transposes for free); the bias
// gradient is a column sum, which tfjs would compute as transpose + reduce.
const fusedLinearBias = tf.customGrad((...args: (tf.Tensor | Saver)[]) => {
  const [x, w, b, save] = args as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D, Saver];
  save([x, w]);
  return {
    value: run(FUSED.linear, { x, w, bias: b }) as tf.Tensor,
    gradFunc: (dy: tf.Tensor, [xs, ws]: tf.Tensor[]) => [
      tf.matMul(dy, ws, false, true),
      tf.matMul(xs, dy, true, false),
      run(FUSED.columnSum, { x: dy }) as tf.Tensor,
    ],
  };
});

const fusedLinearNoBias = tf.customGrad((...args: (tf.Tensor | Saver)[]) => {
  const [x, w, save] = args as [tf.Tensor2D, tf.Tensor2D, Saver];
  save([x, w]);
  return {
    value: run(FUSED.linear, { x, w }) as tf.Tensor,
    gradFunc: (dy: tf.Tensor, [xs, ws]: tf.Tensor[]) => [
      tf.matMul(dy, ws, false, true),
      tf.matMul(xs, dy, true, false),
    ],
  };
});

// Scores, causal mask, softmax and the product with v in one kernel per head; the softmax
// probabilities are kept for the backward pass instead of being recomputed from five ops.
const fusedAttention = tf.customGrad((...args: (tf.Tensor | Saver)[]) => {
  const [q, k, v, save] = args as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D, Saver];
  const attrs = { scale: 1 / Math.sqrt(q.shape[3]) };
  const [out, probs] = run(FUSED.attention, { q, k, v }, attrs) as tf.Tensor[];
  save([q, k, v, probs]);
  return {
    value: out,
    gradFunc: (dy: tf.Tensor, [qs, ks, vs, ps]: tf.Tensor[]) =>
      run(FUSED.attentionGrad, { q: qs, k: ks, v: vs, probs: ps, dy }, attrs) as tf.Tensor[],
  };
});

// The gradient is softmax - onehot, recomputed from the saved log-sum-exp of each row.
const fusedCrossEntropy = tf.customGrad((...args: (tf.Tensor | Saver)[]) => {
  const [logits, targets, save] = args as [tf.Tensor2D, tf.Tensor1D, Saver];
  const [nll, lse] = run(FUSED.crossEntropy, { logits, targets }) as tf.Tensor[];
  save([logits, targets, lse]);
  return {
    value: nll,
    gradFunc: (dy: tf.Tensor, [ls, ts, lses]: tf.Tensor[]) => [
      run(FUSED.crossEntropyGrad, { logits: ls, targets: ts, lse: lses, dy }) as tf.Tensor,
      tf.zerosLike(ts),
    ],
  };
});

// One kernel each way instead of nine elementwise ops and their gradients; the backward
// recomputes GELU's slope from the saved input.
const fusedGelu = tf.customGrad((...args: (tf.Tensor | Saver)[]) => {
  const [x, save] = args as [tf.Tensor, Saver];
  save([x]);
  return {
    value: run(FUSED.gelu, { x }) as tf.Tensor,
    gradFunc: (dy: tf.Tensor, [xs]: tf.Tensor[]) => run(FUSED.geluGrad, { x: xs, dy }) as tf.Tensor,
  };
});

function fusedLayerNorm(x: tf.Tensor, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number) {
  const f = tf.customGrad((...args: (tf.Tensor | Saver)[]) => {
    const [xi, g, b, save] = args as [tf.Tensor, tf.Tensor1D, tf.Tensor1D, Saver];
    const [y, mean, rstd] = run(
      FUSED.layerNorm,
      { x: xi, gamma: g, beta: b },
      { eps },
    ) as tf.Tensor[];
    save([xi, g, mean, rstd]);
    return {
      value: y,
      gradFunc: (dy: tf.Tensor, [xs, gs, ms, rs]: tf.Tensor[]) =>
        run(FUSED.layerNormGrad, { x: xs, gamma: gs, mean: ms, rstd: rs, dy }) as tf.Tensor[],
    };
  });
  return f(x, gamma, beta);
}

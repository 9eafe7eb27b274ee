// Fused kernels behind ops.ts (linear, attention, layer norm, GELU, heads, cross-entropy, AdamW),
// registered under chatrl's own kernel names on the wasm and cpu backends and run through
// tf.engine().runKernel, so they show up in tf.profile and their outputs are tracked like any
// other tensor. Each forward kernel has a matching gradient kernel; ops.ts wires the two
// together with tf.customGrad.
import * as tf from "@tensorflow/tfjs";
import type { NativeKernels, PackedWeight } from "./native.ts";
import { dataAccess } from "./views.ts";

export const FUSED = {
  linear: "ChatrlLinear",
  linearPanels: "ChatrlLinearPanels",
  columnSum: "ChatrlColumnSum",
  attention: "ChatrlCausalAttention",
  attentionGrad: "ChatrlCausalAttentionGrad",
  layerNorm: "ChatrlLayerNorm",
  layerNormGrad: "ChatrlLayerNormGrad",
  gelu: "ChatrlGelu",
  geluGrad: "ChatrlGeluGrad",
  splitHeads: "ChatrlSplitHeads",
  mergeHeads: "ChatrlMergeHeads",
  adamw: "ChatrlAdamW",
  crossEntropy: "ChatrlCrossEntropy",
  crossEntropyGrad: "ChatrlCrossEntropyGrad",
  pagedAttention: "ChatrlPagedAttention",
  decodeLayer: "ChatrlDecodeLayer",
} as const;

/** Input names of ChatrlMergeHeads: one per part. */
export const partName = (i: number) => `x${i}`;

let gradientsRegistered = false;

// Splitting heads and merging them are each other's gradient. Registered once for all backends
// (kernel names are global); the kernels themselves exist only where registerFusedKernels ran.
function registerHeadGradients() {
  if (gradientsRegistered) return;
  gradientsRegistered = true;
  tf.registerGradient({
    kernelName: FUSED.splitHeads,
    gradFunc: (dys, _saved, attrs) => {
      const parts = Array.isArray(dys) ? dys : [dys];
      const inputs = Object.fromEntries(parts.map((d, i) => [partName(i), d]));
      return {
        x: () =>
          tf.engine().runKernel(FUSED.mergeHeads, inputs, attrs as tf.NamedAttrMap) as tf.Tensor,
      };
    },
  });
  tf.registerGradient({
    kernelName: FUSED.mergeHeads,
    gradFunc: (dy, _saved, attrs) => {
      const a = attrs as { heads: number; parts: number };
      // tfjs runs each input's gradient in its own tidy, which releases the other parts.
      const part = (i: number) => () =>
        [tf.engine().runKernel(FUSED.splitHeads, { x: dy as tf.Tensor }, a) as tf.Tensor].flat()[i];
      return Object.fromEntries(Array.from({ length: a.parts }, (_, i) => [partName(i), part(i)]));
    },
  });
}

type Inputs = Record<string, tf.TensorInfo>;

/** ChatrlDecodeLayer's attributes: packed weights, the layer's pools, the block's shape. */
export type DecodeLayerAttrs = Record<"wQkv" | "wProj" | "wFc" | "wFc2", PackedWeight> &
  Record<"kPool" | "vPool", Uint16Array> &
  Record<"heads" | "blockSize" | "scale" | "eps", number> & { norm: 0 | 1; act: 0 | 1 };

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

export function registerFusedKernels(native: NativeKernels, backendName: string): string[] {
  const kernel = (
    name: string,
    run: (
      inputs: Inputs,
      attrs: Record<string, unknown>,
      io: ReturnType<typeof dataAccess>,
    ) => tf.TensorInfo | tf.TensorInfo[],
  ) => {
    tf.registerKernel({
      kernelName: name,
      backendName,
      kernelFunc: ({ inputs, attrs, backend }) =>
        run(inputs as Inputs, attrs as Record<string, unknown>, dataAccess(backendName, backend)),
    });
  };
  const f32 = (io: ReturnType<typeof dataAccess>, t: tf.TensorInfo) => io.view(t) as Float32Array;

  // x: [rows, in], w: [in, out], bias?: [out] -> [rows, out]
  kernel(FUSED.linear, ({ x, w, bias }, _attrs, io) => {
    const [rows, inDim] = x.shape;
    const outDim = w.shape[1];
    const out = io.alloc([rows, outDim], "float32");
    native.linear(
      f32(io, x),
      f32(io, w),
      bias ? f32(io, bias) : null,
      f32(io, out),
      rows,
      inDim,
      outDim,
    );
    return out;
  });

  // A decode step's product on packed weights (packWeight): x: [rows, in], bias: [out] -> [rows,
  // out]. The packed weights come as an attribute (a typed array outside tfjs).
  kernel(FUSED.linearPanels, ({ x, bias }, attrs, io) => {
    const { packed, outDim } = attrs as unknown as { packed: PackedWeight; outDim: number };
    const [rows, inDim] = x.shape;
    const out = io.alloc([rows, outDim], "float32");
    native.linearPanels(
      f32(io, x),
      packed,
      bias ? f32(io, bias) : null,
      f32(io, out),
      rows,
      inDim,
      outDim,
    );
    return out;
  });

  // x: [rows, cols] -> [cols]
  kernel(FUSED.columnSum, ({ x }, _attrs, io) => {
    const cols = x.shape[x.shape.length - 1];
    const out = io.alloc([cols], "float32");
    native.columnSum(f32(io, x), f32(io, out), size(x.shape) / cols, cols);
    return out;
  });

  // q: [B, nh, Tq, hs], k, v: [B, nh, Tk, hs] -> out [B, nh, Tq, hs], probs [B, nh, Tq, Tk]
  kernel(FUSED.attention, ({ q, k, v }, attrs, io) => {
    const [b, nh, tq, hs] = q.shape;
    const tk = k.shape[2];
    const out = io.alloc([b, nh, tq, hs], "float32");
    const probs = io.alloc([b, nh, tq, tk], "float32");
    native.attentionForward(
      f32(io, q),
      f32(io, k),
      f32(io, v),
      f32(io, out),
      f32(io, probs),
      b * nh,
      tq,
      tk,
      hs,
      attrs.scale as number,
    );
    return [out, probs];
  });

  kernel(FUSED.attentionGrad, ({ q, k, v, probs, dy }, attrs, io) => {
    const [b, nh, tq, hs] = q.shape;
    const tk = k.shape[2];
    const dq = io.alloc(q.shape, "float32");
    const dk = io.alloc(k.shape, "float32");
    const dv = io.alloc(v.shape, "float32");
    native.attentionBackward(
      f32(io, q),
      f32(io, k),
      f32(io, v),
      f32(io, probs),
      f32(io, dy),
      f32(io, dq),
      f32(io, dk),
      f32(io, dv),
      b * nh,
      tq,
      tk,
      hs,
      attrs.scale as number,
    );
    return [dq, dk, dv];
  });

  // x: [rows, C], gamma, beta: [C] -> y [rows, C], mean [rows], rstd [rows]
  kernel(FUSED.layerNorm, ({ x, gamma, beta }, attrs, io) => {
    const cols = x.shape[x.shape.length - 1];
    const rows = size(x.shape) / cols;
    const y = io.alloc(x.shape, "float32");
    const mean = io.alloc([rows], "float32");
    const rstd = io.alloc([rows], "float32");
    native.layerNormForward(
      f32(io, x),
      f32(io, gamma),
      f32(io, beta),
      f32(io, y),
      f32(io, mean),
      f32(io, rstd),
      rows,
      cols,
      attrs.eps as number,
    );
    return [y, mean, rstd];
  });

  kernel(FUSED.layerNormGrad, ({ x, gamma, mean, rstd, dy }, _attrs, io) => {
    const cols = x.shape[x.shape.length - 1];
    const rows = size(x.shape) / cols;
    const dx = io.alloc(x.shape, "float32");
    const dgamma = io.alloc([cols], "float32");
    const dbeta = io.alloc([cols], "float32");
    native.layerNormBackward(
      f32(io, x),
      f32(io, gamma),
      f32(io, mean),
      f32(io, rstd),
      f32(io, dy),
      f32(io, dx),
      f32(io, dgamma),
      f32(io, dbeta),
      rows,
      cols,
    );
    return [dx, dgamma, dbeta];
  });

  // x -> GELU(x), any shape
  kernel(FUSED.gelu, ({ x }, _attrs, io) => {
    const y = io.alloc(x.shape, "float32");
    native.geluForward(f32(io, x), f32(io, y), size(x.shape));
    return y;
  });

  kernel(FUSED.geluGrad, ({ x, dy }, _attrs, io) => {
    const dx = io.alloc(x.shape, "float32");
    native.geluBackward(f32(io, x), f32(io, dy), f32(io, dx), size(x.shape));
    return dx;
  });

  // x: [B, T, parts * nh * hs] -> parts x [B, nh, T, hs]
  kernel(FUSED.splitHeads, ({ x }, attrs, io) => {
    const { heads, parts } = attrs as { heads: number; parts: number };
    const [b, t, width] = x.shape;
    const hs = width / parts / heads;
    const outs = Array.from({ length: parts }, () => io.alloc([b, heads, t, hs], "float32"));
    const src = f32(io, x);
    outs.forEach((out, part) => {
      native.toHeads(src, f32(io, out), b, t, parts, part, heads, hs);
    });
    return outs;
  });

  // parts x [B, nh, T, hs] -> [B, T, parts * nh * hs]
  kernel(FUSED.mergeHeads, (inputs, attrs, io) => {
    const { parts } = attrs as { heads: number; parts: number };
    const [b, nh, t, hs] = inputs[partName(0)].shape;
    const out = io.alloc([b, t, parts * nh * hs], "float32");
    const dst = f32(io, out);
    for (let part = 0; part < parts; part++) {
      native.fromHeads(f32(io, inputs[partName(part)]), dst, b, t, parts, part, nh, hs);
    }
    return out;
  });

  // logits: [N, V], targets: [N] int32 -> nll [N], logSumExp [N]
  kernel(FUSED.crossEntropy, ({ logits, targets }, _attrs, io) => {
    const [rows, classes] = logits.shape;
    const nll = io.alloc([rows], "float32");
    const lse = io.alloc([rows], "float32");
    native.crossEntropyForward(
      f32(io, logits),
      io.view(targets) as Int32Array,
      f32(io, nll),
      f32(io, lse),
      rows,
      classes,
    );
    return [nll, lse];
  });

  kernel(FUSED.crossEntropyGrad, ({ logits, targets, lse, dy }, _attrs, io) => {
    const [rows, classes] = logits.shape;
    const dLogits = io.alloc([rows, classes], "float32");
    native.crossEntropyBackward(
      f32(io, logits),
      io.view(targets) as Int32Array,
      f32(io, lse),
      f32(io, dy),
      f32(io, dLogits),
      rows,
      classes,
    );
    return dLogits;
  });

  // p, m, v, g (same shape) -> p', m', v' after one AdamW step
  kernel(FUSED.adamw, ({ p, m, v, g }, attrs, io) => {
    const a = attrs as Record<
      "lr" | "beta1" | "beta2" | "eps" | "weightDecay" | "bc1" | "bc2",
      number
    >;
    const outs = [p, m, v].map((t) => io.alloc(t.shape, "float32"));
    const n = size(p.shape);
    const [pOut, mOut, vOut] = outs.map((t) => f32(io, t));
    native.adamw(
      f32(io, p),
      f32(io, m),
      f32(io, v),
      f32(io, g),
      pOut,
      mOut,
      vOut,
      n,
      a.lr,
      a.beta1,
      a.beta2,
      a.eps,
      a.weightDecay,
      a.bc1,
      a.bc2,
    );
    return outs;
  });

  // One decode step on a paged KV cache (paged-kv-cache.ts). qkv: [rows, 3C]; table: [rows,
  // maxBlocks]; lengths: [rows] -> [rows, C]. The pools come as attributes, float16 bits of
  // [positions, C] (written in place: this step's keys and values).
  kernel(FUSED.pagedAttention, ({ qkv, table, lengths }, attrs, io) => {
    const a = attrs as unknown as Record<"heads" | "blockSize" | "scale", number> &
      Record<"kPool" | "vPool", Uint16Array>;
    const [rows, threeC] = qkv.shape;
    const c = threeC / 3;
    const out = io.alloc([rows, c], "float32");
    native.pagedAttention(
      f32(io, qkv),
      a.kPool,
      a.vPool,
      io.view(table) as Int32Array,
      io.view(lengths) as Int32Array,
      f32(io, out),
      rows,
      a.heads,
      c / a.heads,
      a.blockSize,
      table.shape[1],
      a.kPool.length / c,
      a.scale,
    );
    return out;
  });

  // One transformer block of a decode step (model.ts Block): x: [rows, C], the norms' weights
  // and the projections' biases, table: [rows, maxBlocks], lengths: [rows] -> [rows, C]. The
  // packed weights and the float16 pools come as attributes.
  kernel(FUSED.decodeLayer, (inputs, attrs, io) => {
    const { x, ln1g, ln1b, bQkv, bProj, ln2g, ln2b, bFc, bFc2, table, lengths } = inputs;
    const a = attrs as unknown as DecodeLayerAttrs;
    const [rows, c] = x.shape;
    const out = io.alloc([rows, c], "float32");
    native.decodeLayer(
      f32(io, x),
      f32(io, out),
      f32(io, ln1g),
      ln1b ? f32(io, ln1b) : null,
      a.wQkv,
      f32(io, bQkv),
      a.wProj,
      f32(io, bProj),
      f32(io, ln2g),
      ln2b ? f32(io, ln2b) : null,
      a.wFc,
      f32(io, bFc),
      a.wFc2,
      f32(io, bFc2),
      a.kPool,
      a.vPool,
      io.view(table) as Int32Array,
      io.view(lengths) as Int32Array,
      rows,
      c,
      a.heads,
      bFc.shape[0],
      a.blockSize,
      table.shape[1],
      a.kPool.length / c,
      a.scale,
      a.eps,
      a.norm,
      a.act,
    );
    return out;
  });

  registerHeadGradients();
  return Object.values(FUSED);
}

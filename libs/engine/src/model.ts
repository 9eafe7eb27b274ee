// A decoder-only transformer in the shape of GPT-2 (nanoGPT's model.py in spirit).
// Weights are tf.Variables owned by the GPT and named as in Hugging Face's GPT-2, with
// Conv1D layout ([in, out]) for the projections, so checkpoints load in other tools.
import { loraTargetNames } from "@chatrl/contracts/lora";
import * as tf from "@tensorflow/tfjs";
import { type ModelConfig, validateModelConfig } from "./config";
import type { KVCache } from "./kv-cache";
import type { PagedKVCache } from "./paged-kv-cache";
import {
  type DecodeDtype,
  FUSED,
  fusedKernelsActive,
  loadNativeKernels,
  type NativeKernels,
  type PackedWeight,
  packWeight,
  tensorView,
} from "./kernels/index.ts";
import {
  causalAttention,
  embedding,
  gelu,
  layerNorm,
  linear,
  linearPacked,
  mergeHeads,
  splitHeads,
} from "./ops";
import { paddedCausalAttention } from "./padded-attention";
import { Rng } from "./rng";

export type ForwardOptions = {
  /** Enables dropout. Default false. */
  training?: boolean;
  /** Keys/values of earlier positions; this call appends to it and continues its positions. */
  cache?: KVCache;
  /**
   * For a batch of left-padded sequences: how many pad tokens start each row. Those positions
   * are never attended to and positions count from the first real token.
   */
  padLeft?: readonly number[];
  /**
   * A decode step of continuous batching: one new token per row (ids [B, 1]) at each row's own
   * position, its keys and values written into the paged cache's blocks (beginStep set the rows).
   */
  paged?: PagedKVCache;
  /** Source of dropout seeds while training (the trainer passes its own to make runs resumable). */
  rng?: Rng;
};

/** Per-forward state the modules need besides their input. */
type Context = {
  training: boolean;
  cache?: KVCache;
  padLeft?: readonly number[];
  paged?: PagedKVCache;
  rng: Rng;
};

type Init = { normal: number } | "zeros" | "ones";
type MakeParam = (name: string, shape: number[], init: Init) => tf.Variable;

function dropout(x: tf.Tensor, rate: number, ctx: Context): tf.Tensor {
  return ctx.training && rate > 0 ? tf.dropout(x, rate, undefined, ctx.rng.nextUint32()) : x;
}

/** A zero-copy view of a tensor that may be absent (an RMS norm's bias). */
function optionalView(t?: tf.Tensor): Float32Array | null {
  return t ? tensorView(t) : null;
}

/** LoRA adapters (DeepSpeed-Chat's --lora_dim, --lora_module_name): low-rank updates to projections. */
export type LoraConfig = {
  /** Rank of each adapter. */
  dim: number;
  /** Projections whose name (h.<layer>.attn.c_attn, ...) contains this string get an adapter. */
  moduleName: string;
  /** DeepSpeed-Chat's lora_scaling: the update is (x A) B * scaling / dim. Default 1. */
  scaling?: number;
  /** Names the adapters' random init: equal seeds, equal adapters. Default 0. */
  seed?: number;
};

/** A low-rank update of one projection: x -> (x right) left * scale. */
type Adapter = {
  right: tf.Variable<tf.Rank.R2>; // [in, dim], kaiming-uniform
  left: tf.Variable<tf.Rank.R2>; // [dim, out], zeros: a fresh adapter changes nothing
  scale: number;
  /** The projection's own weight while the adapter is merged into it. */
  unmerged?: tf.Tensor2D;
};

/**
 * A projection y = x W + b in GPT-2's Conv1D layout (W: [in, out]), with an optional LoRA
 * adapter (DeepSpeed-Chat's LinearLayer_LoRA). Merged, the adapter's product sits inside W (the
 * hybrid engine's inference mode, and what a checkpoint stores); unmerged, it is added on top.
 */
class Projection {
  readonly w: tf.Variable<tf.Rank.R2>;
  readonly b: tf.Variable<tf.Rank.R1>;
  adapter?: Adapter;
  /** W packed for inference (GPT.packForDecoding), a copy that must follow W. */
  packed?: PackedWeight;

  constructor(
    make: MakeParam,
    readonly name: string,
    inDim: number,
    outDim: number,
    std: number,
  ) {
    this.w = make(`${name}.weight`, [inDim, outDim], { normal: std }) as tf.Variable<tf.Rank.R2>;
    this.b = make(`${name}.bias`, [outDim], "zeros") as tf.Variable<tf.Rank.R1>;
  }

  forward(x: tf.Tensor, ctx: Context): tf.Tensor {
    const y =
      this.packed && !ctx.training
        ? linearPacked(x, this.packed, this.w.shape[1], this.b)
        : linear(x, this.w, this.b);
    const a = this.adapter;
    if (!a || a.unmerged) {
      if (a && ctx.training) throw new Error("GPT.forward: cannot train while LoRA is merged");
      return y;
    }
    return tf.add(y, tf.mul(linear(linear(x, a.right), a.left), a.scale));
  }

  /** The packed weights when they alone give this projection (no adapter added on top). */
  packedAlone(): PackedWeight | null {
    return this.packed && (!this.adapter || this.adapter.unmerged) ? this.packed : null;
  }

  /** The adapter's update, scale * right @ left: [in, out]. */
  delta(): tf.Tensor2D {
    const a = this.adapter as Adapter;
    return tf.tidy(() => tf.mul(tf.matMul(a.right, a.left), a.scale)) as tf.Tensor2D;
  }
}

class Norm {
  readonly weight: tf.Variable;
  readonly bias?: tf.Variable;

  constructor(
    make: MakeParam,
    prefix: string,
    private readonly config: ModelConfig,
  ) {
    this.weight = make(`${prefix}.weight`, [config.dModel], "ones");
    if (config.norm === "layernorm") this.bias = make(`${prefix}.bias`, [config.dModel], "zeros");
  }

  forward(x: tf.Tensor): tf.Tensor {
    const eps = this.config.layerNormEps;
    if (this.config.norm === "rmsnorm") {
      const meanSquare = tf.mean(tf.square(x), -1, true);
      return tf.mul(tf.mul(x, tf.rsqrt(tf.add(meanSquare, eps))), this.weight);
    }
    return layerNorm(x, this.weight as tf.Tensor1D, this.bias as tf.Tensor1D, eps);
  }
}

class CausalSelfAttention {
  readonly cAttn: Projection;
  readonly cProj: Projection;

  constructor(
    make: MakeParam,
    prefix: string,
    private readonly layer: number,
    private readonly config: ModelConfig,
  ) {
    const c = config.dModel;
    // GPT-2 scales the init of projections into the residual stream by 1/sqrt(2 * nLayers).
    const residualStd = 0.02 / Math.sqrt(2 * config.nLayers);
    this.cAttn = new Projection(make, `${prefix}.c_attn`, c, 3 * c, 0.02);
    this.cProj = new Projection(make, `${prefix}.c_proj`, c, c, residualStd);
  }

  forward(x: tf.Tensor3D, ctx: Context): tf.Tensor3D {
    const nh = this.config.nHeads;
    const qkv = this.cAttn.forward(x, ctx) as tf.Tensor3D; // [B, T, 3C]
    if (ctx.paged) {
      const [batch, , threeC] = qkv.shape; // T = 1
      const y = ctx.paged.attend(this.layer, qkv.reshape([batch, threeC])); // [B, C]
      return this.cProj.forward(y.reshape([batch, 1, threeC / 3]), ctx) as tf.Tensor3D;
    }
    const [qh, k, v] = splitHeads(qkv, nh, 3); // [B, T, 3C] -> 3 x [B, nh, T, hs]
    let kh = k;
    let vh = v;
    if (ctx.cache) [kh, vh] = ctx.cache.append(this.layer, kh, vh); // [B, nh, past + T, hs]
    const y = ctx.padLeft
      ? paddedCausalAttention(qh, kh, vh, ctx.padLeft)
      : causalAttention(qh, kh, vh); // [B, nh, T, hs]
    const merged = mergeHeads(y); // [B, nh, T, hs] -> [B, T, C]
    return dropout(this.cProj.forward(merged, ctx), this.config.dropout, ctx) as tf.Tensor3D;
  }
}

class MLP {
  readonly cFc: Projection;
  readonly cProj: Projection;

  constructor(
    make: MakeParam,
    prefix: string,
    private readonly config: ModelConfig,
  ) {
    const c = config.dModel;
    const hidden = config.mlpRatio * c;
    this.cFc = new Projection(make, `${prefix}.c_fc`, c, hidden, 0.02);
    this.cProj = new Projection(
      make,
      `${prefix}.c_proj`,
      hidden,
      c,
      0.02 / Math.sqrt(2 * config.nLayers),
    );
  }

  forward(x: tf.Tensor3D, ctx: Context): tf.Tensor3D {
    const h = this.cFc.forward(x, ctx); // [B, T, 4C]
    const activated = this.config.activation === "gelu" ? gelu(h) : tf.relu(h);
    return dropout(this.cProj.forward(activated, ctx), this.config.dropout, ctx) as tf.Tensor3D; // [B, T, C]
  }
}

class Block {
  private readonly ln1: Norm;
  readonly attn: CausalSelfAttention;
  private readonly ln2: Norm;
  readonly mlp: MLP;

  constructor(
    make: MakeParam,
    private readonly layer: number,
    private readonly config: ModelConfig,
  ) {
    const prefix = `h.${layer}`;
    this.ln1 = new Norm(make, `${prefix}.ln_1`, config);
    this.attn = new CausalSelfAttention(make, `${prefix}.attn`, layer, config);
    this.ln2 = new Norm(make, `${prefix}.ln_2`, config);
    this.mlp = new MLP(make, `${prefix}.mlp`, config);
  }

  projections(): Projection[] {
    return [this.attn.cAttn, this.attn.cProj, this.mlp.cFc, this.mlp.cProj];
  }

  /**
   * A decode step through this block in one native call (ChatrlDecodeLayer), the same
   * arithmetic as forward() without a dispatch per op: on the native kernels' float16 paged
   * cache with every projection packed and no adapter added on top. Null otherwise.
   */
  private fusedDecode(x: tf.Tensor3D, paged: PagedKVCache): tf.Tensor3D | null {
    const step = paged.nativeLayer(this.layer);
    const packed = this.packedAlone();
    if (!step || !packed) return null;
    const [qkv, proj, fc, fc2] = this.projections();
    const [wQkv, wProj, wFc, wFc2] = packed;
    const [batch, , c] = x.shape; // T = 1
    const { norm, activation, layerNormEps } = this.config;
    const betas: tf.NamedTensorMap =
      norm === "layernorm"
        ? { ln1b: this.ln1.bias as tf.Tensor, ln2b: this.ln2.bias as tf.Tensor }
        : {};
    const inputs = {
      x: x.reshape([batch, c]),
      ln1g: this.ln1.weight,
      ln2g: this.ln2.weight,
      ...betas,
      bQkv: qkv.b,
      bProj: proj.b,
      bFc: fc.b,
      bFc2: fc2.b,
      ...step.inputs,
    };
    const attrs = {
      wQkv,
      wProj,
      wFc,
      wFc2,
      ...step.attrs,
      eps: layerNormEps,
      norm: norm === "layernorm" ? 0 : 1,
      act: activation === "gelu" ? 0 : 1,
    };
    const out = tf
      .engine()
      .runKernel(FUSED.decodeLayer, inputs, attrs as unknown as tf.NamedAttrMap) as tf.Tensor;
    return out.reshape([batch, 1, c]) as tf.Tensor3D;
  }

  /** The four projections' packed copies, or null unless every one is packed and alone. */
  packedAlone(): PackedWeight[] | null {
    const packed = this.projections().map((p) => p.packedAlone());
    return packed.some((p) => p === null) ? null : (packed as PackedWeight[]);
  }

  /**
   * The same native call outside tfjs (GPT.decodeLogits): x [rows, C] -> out, on the weights'
   * own data. The caller checked packedAlone() and the pools.
   */
  decodeNative(
    x: Float32Array,
    out: Float32Array,
    rows: number,
    paged: PagedKVCache,
    native: NativeKernels,
  ): void {
    const step = paged.nativeArrays(this.layer);
    const packed = this.packedAlone();
    if (!step || !packed) throw new Error(`block ${this.layer} cannot decode natively`);
    const [qkv, proj, fc, fc2] = this.projections();
    const [wQkv, wProj, wFc, wFc2] = packed;
    const { dModel, norm, activation, layerNormEps } = this.config;
    native.decodeLayer(
      x,
      out,
      tensorView(this.ln1.weight),
      optionalView(this.ln1.bias),
      wQkv,
      tensorView(qkv.b),
      wProj,
      tensorView(proj.b),
      tensorView(this.ln2.weight),
      optionalView(this.ln2.bias),
      wFc,
      tensorView(fc.b),
      wFc2,
      tensorView(fc2.b),
      step.kPool,
      step.vPool,
      step.table,
      step.lengths,
      rows,
      dModel,
      step.heads,
      fc.b.shape[0],
      step.blockSize,
      step.maxBlocks,
      step.kPool.length / dModel,
      step.scale,
      layerNormEps,
      norm === "layernorm" ? 0 : 1,
      activation === "gelu" ? 0 : 1,
    );
  }

  forward(x: tf.Tensor3D, ctx: Context): tf.Tensor3D {
    const fused = ctx.paged && this.fusedDecode(x, ctx.paged);
    if (fused) return fused;
    const afterAttn = tf.add(
      x,
      this.attn.forward(this.ln1.forward(x) as tf.Tensor3D, ctx),
    ) as tf.Tensor3D;
    return tf.add(
      afterAttn,
      this.mlp.forward(this.ln2.forward(afterAttn) as tf.Tensor3D, ctx),
    ) as tf.Tensor3D;
  }
}

export class GPT {
  readonly config: ModelConfig;
  private readonly weights = new Map<string, tf.Variable>();
  private readonly wte: tf.Variable<tf.Rank.R2>;
  private readonly wpe: tf.Variable<tf.Rank.R2>;
  private readonly blocks: Block[];
  private readonly lnF: Norm;
  private readonly lmHead?: tf.Variable<tf.Rank.R2>;
  /** Dropout seeds when the caller passes no rng. */
  private readonly ownRng: Rng;
  /** Projections with a LoRA adapter (addLora), in layer order. */
  private adapted: Projection[] = [];
  private loraIsMerged = false;
  #decodeDtype: DecodeDtype | null = null;
  /** The LM head as packForDecoding packs it: [C, V] (the transpose of lm_head / wte). */
  #packedHead?: PackedWeight;
  private disposed = false;

  /** A freshly initialized model (GPT-2 init); equal seeds give equal weights. */
  constructor(config: ModelConfig, seed = 0) {
    validateModelConfig(config);
    this.config = { ...config };
    const initRng = Rng.create(`gpt-init:${seed}`);
    this.ownRng = Rng.create(`gpt-dropout:${seed}`);
    const make: MakeParam = (name, shape, init) => {
      const value =
        init === "zeros"
          ? tf.zeros(shape)
          : init === "ones"
            ? tf.ones(shape)
            : tf.randomNormal(shape, 0, init.normal, "float32", initRng.nextUint32());
      const variable = tf.variable(value, true);
      value.dispose(); // the variable holds its own reference to the data
      this.weights.set(name, variable);
      return variable;
    };
    const { vocabSize, contextLength, dModel } = config;
    this.wte = make("wte.weight", [vocabSize, dModel], { normal: 0.02 }) as tf.Variable<tf.Rank.R2>;
    this.wpe = make("wpe.weight", [contextLength, dModel], {
      normal: 0.02,
    }) as tf.Variable<tf.Rank.R2>;
    this.blocks = Array.from({ length: config.nLayers }, (_, i) => new Block(make, i, config));
    this.lnF = new Norm(make, "ln_f", config);
    if (!config.tiedEmbeddings) {
      // nn.Linear layout [out, in], as Hugging Face stores lm_head.weight.
      this.lmHead = make("lm_head.weight", [vocabSize, dModel], {
        normal: 0.02,
      }) as tf.Variable<tf.Rank.R2>;
    }
  }

  /**
   * ids: [B, T] int32 token ids -> final hidden states [B, T, C] (after ln_f), owned by the
   * caller. With a cache, ids continue the cached positions and their keys/values are appended.
   */
  hidden(ids: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor3D {
    if (this.disposed) throw new Error("GPT.forward on a disposed model");
    const { training = false, cache, padLeft, paged, rng = this.ownRng } = opts;
    if (training && (cache || paged))
      throw new Error("GPT.forward: a KV cache is for inference, not training");
    if (paged && (cache || padLeft || ids.shape[1] !== 1))
      throw new Error("GPT.forward: a paged cache takes one new token per row, alone");
    if (ids.dtype !== "int32") throw new Error(`GPT.forward: ids must be int32, got ${ids.dtype}`);
    const [batch, time] = ids.shape;
    const past = cache?.length ?? 0;
    if (past + time > this.config.contextLength) {
      throw new Error(
        `sequence of ${past + time} tokens exceeds the context length ${this.config.contextLength}`,
      );
    }
    const ctx: Context = { training, cache, padLeft, paged, rng };
    return tf.tidy(() => {
      const tok = embedding(this.wte, ids); // [B, T, C]
      const positions = paged?.positionIds() ?? this.positions(batch, time, past, padLeft);
      const pos = embedding(this.wpe, positions); // [B, T, C] or [T, C]
      let x = dropout(tf.add(tok, pos), this.config.dropout, ctx) as tf.Tensor3D;
      for (const block of this.blocks) x = block.forward(x, ctx);
      return this.lnF.forward(x) as tf.Tensor3D; // [B, T, C]
    });
  }

  /** ids: [B, T] int32 -> logits [B, T, V]: hidden() through the LM head. Same options. */
  forward(ids: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor3D {
    return tf.tidy(() => {
      const normed = this.hidden(ids, opts); // [B, T, C]
      const [batch, time] = ids.shape;
      const flat = normed.reshape([batch * time, this.config.dModel]) as tf.Tensor2D; // [B*T, C]
      const logits = this.head(flat, opts.training ?? false);
      return logits.reshape([batch, time, this.config.vocabSize]) as tf.Tensor3D;
    });
  }

  /**
   * ids: [B, T] int32 -> the logits of each row's last position [B, V]: what a prompt's prefill
   * samples from, without the LM head on the other T - 1 positions (with a large vocabulary the
   * head is most of a short prompt's forward). Same options as forward().
   */
  lastLogits(ids: tf.Tensor2D, opts: ForwardOptions = {}): tf.Tensor2D {
    return tf.tidy(() => {
      const normed = this.hidden(ids, opts); // [B, T, C]
      const [batch, time] = ids.shape;
      const { dModel } = this.config;
      const last = normed.slice([0, time - 1, 0], [batch, 1, dModel]).reshape([batch, dModel]);
      return this.head(last as tf.Tensor2D, opts.training ?? false);
    });
  }

  /**
   * A decode step's logits outside tfjs: each row's new token (ids, [B]) at the paged cache's
   * begun step, through every block's native call (Block.decodeNative), the final norm and the
   * packed LM head, on the weights' own data. No tensor is made, so none of tfjs's per-op
   * dispatch and bookkeeping, most of a one-row step's time outside the kernels. `pick` chooses
   * whose logits come back (default every row): [pick.length, V]. Null where such a step cannot
   * run (no native kernels, weights not packed or with an adapter on top, tfjs pools): forward()
   * with the paged cache then does the same step.
   */
  decodeLogits(
    ids: Int32Array,
    paged: PagedKVCache,
    pick?: readonly number[],
  ): Float32Array | null {
    const native = loadNativeKernels();
    if (this.disposed || !native || !fusedKernelsActive() || !this.#packedHead) return null;
    const step = paged.nativeArrays(0);
    if (!step || this.blocks.some((b) => b.packedAlone() === null)) return null;
    const { dModel: c, vocabSize, contextLength, layerNormEps } = this.config;
    const rows = ids.length;
    if (step.lengths.length !== rows)
      throw new Error("GPT.decodeLogits: one token per row of the step");
    let x = new Float32Array(rows * c);
    let y = new Float32Array(rows * c);
    const wte = tensorView(this.wte);
    const wpe = tensorView(this.wpe);
    for (let r = 0; r < rows; r++) {
      const position = step.lengths[r];
      if (position >= contextLength)
        throw new Error(`position ${position} is past the context length ${contextLength}`);
      if (!(ids[r] >= 0 && ids[r] < vocabSize))
        throw new Error(`token id ${ids[r]} is outside the vocabulary of ${vocabSize}`);
      const t = ids[r] * c;
      const p = position * c;
      for (let j = 0; j < c; j++) x[r * c + j] = wte[t + j] + wpe[p + j];
    }
    for (const block of this.blocks) {
      block.decodeNative(x, y, rows, paged, native);
      [x, y] = [y, x];
    }
    const bias = this.lnF.bias ? tensorView(this.lnF.bias) : null;
    native.normRows(x, tensorView(this.lnF.weight), bias, y, rows, c, layerNormEps);
    let normed = y;
    if (pick) {
      normed = new Float32Array(pick.length * c);
      for (const [i, r] of pick.entries()) normed.set(y.subarray(r * c, (r + 1) * c), i * c);
    }
    const n = pick?.length ?? rows;
    const logits = new Float32Array(n * vocabSize);
    native.linearPanels(normed, this.#packedHead, null, logits, n, c, vocabSize);
    return logits;
  }

  /** Inference logits of final hidden states (hidden()'s, after ln_f): [N, C] -> [N, V]. */
  logits(normed: tf.Tensor2D): tf.Tensor2D {
    return this.head(normed, false);
  }

  /** The LM head: hidden states [N, C] -> logits [N, V], on its packed copy outside training. */
  private head(x: tf.Tensor2D, training: boolean): tf.Tensor2D {
    if (this.#packedHead && !training)
      return linearPacked(x, this.#packedHead, this.config.vocabSize) as tf.Tensor2D;
    return tf.matMul(x, this.lmHead ?? this.wte, false, true); // head: [V, C]
  }

  /** Position ids: [T] when every row starts at 0, [B, T] when rows are left-padded. */
  private positions(
    batch: number,
    time: number,
    past: number,
    padLeft?: readonly number[],
  ): tf.Tensor {
    if (!padLeft) return tf.range(past, past + time, 1, "int32");
    const ids = new Int32Array(batch * time);
    for (let b = 0; b < batch; b++) {
      for (let t = 0; t < time; t++) ids[b * time + t] = Math.max(0, past + t - padLeft[b]);
    }
    return tf.tensor2d(ids, [batch, time], "int32");
  }

  /** Number of weights (a tied embedding counts once). */
  parameterCount(): number {
    let total = 0;
    for (const w of this.weights.values()) total += w.size;
    return total;
  }

  /**
   * Training FLOPs (forward + backward) per token at sequence length seqLen, as nanoGPT's
   * estimate_mfu counts them (PaLM appendix B): 6 per weight plus 12 * L * C * T for attention.
   * Divide achieved FLOP/s by the backend's measured matmul rate for the utilization.
   */
  trainingFlopsPerToken(seqLen: number = this.config.contextLength): number {
    const { nLayers, dModel } = this.config;
    return 6 * this.parameterCount() + 12 * nLayers * dModel * seqLen;
  }

  /**
   * Every weight under its Hugging Face GPT-2 name. The variables stay owned by the model. With
   * LoRA merged (mergeLora) the projections hold the adapters' updates: what a checkpoint stores.
   */
  namedWeights(): Map<string, tf.Variable> {
    return new Map(this.weights);
  }

  /**
   * Adds a LoRA adapter to every projection whose name contains `lora.moduleName`, as
   * DeepSpeed-Chat's convert_linear_layer_to_lora does: right [in, dim] kaiming-uniform, left
   * [dim, out] zeros, so the model computes exactly what it did before. Returns the names.
   */
  addLora(lora: LoraConfig): string[] {
    if (this.adapted.length > 0) throw new Error("this model already has LoRA adapters");
    const { dim, moduleName, scaling = 1, seed = 0 } = lora;
    if (!Number.isInteger(dim) || dim <= 0 || dim > this.config.dModel)
      throw new Error(`LoRA dim must be an integer in 1..${this.config.dModel}, got ${dim}`);
    const wanted = new Set(loraTargetNames(this.config.nLayers, moduleName));
    const chosen = this.blocks.flatMap((b) => b.projections()).filter((p) => wanted.has(p.name));
    if (chosen.length === 0) {
      throw new Error(
        `LoRA module name "${moduleName}" matches no projection of this model ` +
          `(${this.config.nLayers} layers; names like h.0.attn.c_attn, h.0.mlp.c_fc)`,
      );
    }
    const rng = Rng.create(`lora-init:${seed}`);
    const bound = 1 / Math.sqrt(dim); // torch's kaiming_uniform_(a=sqrt(5)) on a [in, dim] tensor
    for (const p of chosen) {
      const [inDim, outDim] = p.w.shape;
      const right = tf.tidy(() =>
        tf.variable(tf.randomUniform([inDim, dim], -bound, bound, "float32", rng.nextUint32())),
      ) as tf.Variable<tf.Rank.R2>;
      const left = tf.tidy(() => tf.variable(tf.zeros([dim, outDim]))) as tf.Variable<tf.Rank.R2>;
      p.adapter = { right, left, scale: scaling / dim };
    }
    this.adapted = chosen;
    return chosen.map((p) => p.name);
  }

  get hasLora(): boolean {
    return this.adapted.length > 0;
  }

  get loraMerged(): boolean {
    return this.loraIsMerged;
  }

  /** The adapters' weights, `<projection>.lora_right_weight` / `.lora_left_weight` (owned by the model). */
  loraWeights(): Map<string, tf.Variable> {
    const out = new Map<string, tf.Variable>();
    for (const p of this.adapted) {
      const a = p.adapter as Adapter;
      out.set(`${p.name}.lora_right_weight`, a.right);
      out.set(`${p.name}.lora_left_weight`, a.left);
    }
    return out;
  }

  /** What an optimizer updates: the adapters alone (onlyLora) or every weight and the adapters. */
  trainableWeights(onlyLora = false): Map<string, tf.Variable> {
    if (onlyLora && !this.hasLora)
      throw new Error("only the LoRA adapters to train, but none were added");
    return new Map([...(onlyLora ? [] : this.weights), ...this.loraWeights()]);
  }

  /**
   * Folds each adapter's update into its projection (DeepSpeed-Chat's fuse_lora_weight), for fast
   * inference and for checkpoints; unmergeLora() puts the projection's own weight back exactly.
   */
  mergeLora(): void {
    if (!this.hasLora || this.loraIsMerged) return;
    this.unpackDecoding(); // the projections change
    for (const p of this.adapted) {
      const a = p.adapter as Adapter;
      a.unmerged = tf.keep(p.w.clone());
      tf.tidy(() => p.w.assign(tf.add(p.w, p.delta())));
    }
    this.loraIsMerged = true;
  }

  unmergeLora(): void {
    if (!this.loraIsMerged) return;
    this.unpackDecoding();
    for (const p of this.adapted) {
      const a = p.adapter as Adapter;
      p.w.assign(a.unmerged as tf.Tensor2D);
      a.unmerged?.dispose();
      a.unmerged = undefined;
    }
    this.loraIsMerged = false;
  }

  /** Runs `fn` with the adapters merged (a checkpoint, an EMA update), unmerged again after. */
  async withLoraMerged<T>(fn: () => T | Promise<T>): Promise<T> {
    if (!this.hasLora || this.loraIsMerged) return fn();
    this.mergeLora();
    try {
      return await fn();
    } finally {
      this.unmergeLora();
    }
  }

  /**
   * What resuming LoRA training needs beyond a (merged) checkpoint: the adapters and the adapted
   * projections' own weights, as `lora.<name>` and `lora_base.<name>`. Owned by the model.
   */
  loraState(): Map<string, tf.Tensor> {
    if (this.loraIsMerged) throw new Error("LoRA state of a merged model: unmerge it first");
    const out = new Map<string, tf.Tensor>();
    for (const [name, w] of this.loraWeights()) out.set(`lora.${name}`, w);
    for (const p of this.adapted) out.set(`lora_base.${p.name}.weight`, p.w);
    return out;
  }

  /** Restores loraState(): the adapters' and the adapted projections' weights, replacing merged ones. */
  loadLoraState(tensors: Map<string, tf.Tensor>): void {
    this.unmergeLora();
    const targets = this.loraState();
    for (const [name, target] of targets) {
      const value = tensors.get(name);
      if (!value) throw new Error(`LoRA state is missing ${name}`);
      if (!tf.util.arraysEqual(value.shape, target.shape))
        throw new Error(
          `LoRA state ${name} has shape [${value.shape}], expected [${target.shape}]`,
        );
    }
    for (const [name, target] of targets)
      (target as tf.Variable).assign(tensors.get(name) as tf.Tensor);
  }

  /**
   * Copies every projection's weight, and the LM head, into the layout of the native product
   * for few rows (kernels/index.ts packWeight), in float32 or bfloat16, which every forward pass
   * outside training then uses: continuous batching's steps multiply a handful of rows by every weight,
   * and prefill on the same kernel keeps a row's numbers independent of what shares its batch.
   * Packing in another dtype replaces the copies. Returns the bytes the new copies add (0 where
   * the native kernels are off, or when already packed in `dtype`). The copies do not follow the
   * weights: loadWeights and LoRA merges drop them; anything else that changes the weights must
   * call unpackDecoding() first.
   */
  packForDecoding(dtype: DecodeDtype = "float32"): number {
    if (this.#decodeDtype !== dtype) this.unpackDecoding();
    let bytes = 0;
    for (const p of this.blocks.flatMap((b) => b.projections())) {
      if (p.packed) continue;
      const packed = packWeight(p.w, dtype);
      if (!packed) return bytes;
      p.packed = packed;
      this.#decodeDtype = dtype;
      bytes += packed.byteLength;
    }
    if (!this.#packedHead) {
      const headT = tf.tidy(() => tf.transpose(this.lmHead ?? this.wte) as tf.Tensor2D); // [C, V]
      const packed = packWeight(headT, dtype);
      headT.dispose();
      if (!packed) return bytes;
      this.#packedHead = packed;
      bytes += packed.byteLength;
    }
    return bytes;
  }

  /** The dtype of the packed copies decode steps use, or null when there are none (float32 ops). */
  get decodeDtype(): DecodeDtype | null {
    return this.#decodeDtype;
  }

  /** Drops the copies packForDecoding() made; decode steps use the weights themselves again. */
  unpackDecoding(): void {
    for (const p of this.blocks.flatMap((b) => b.projections())) p.packed = undefined;
    this.#packedHead = undefined;
    this.#decodeDtype = null;
  }

  dispose(): void {
    if (this.disposed) return;
    this.unpackDecoding();
    this.unmergeLora();
    for (const w of [...this.weights.values(), ...this.loraWeights().values()]) w.dispose();
    this.weights.clear();
    this.adapted = [];
    this.disposed = true;
  }
}

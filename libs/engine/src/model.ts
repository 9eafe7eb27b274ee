// A decoder-only transformer in the shape of GPT-2 (nanoGPT's model.py in spirit).
// Weights are tf.Variables owned by the GPT and named as in Hugging Face's GPT-2, with
// Conv1D layout ([in, out]) for the projections, so checkpoints load in other tools.
import * as tf from "@tensorflow/tfjs";
import { type ModelConfig, validateModelConfig } from "./config";
import type { KVCache } from "./kv-cache";
import type { PagedKVCache } from "./paged-kv-cache";
import { causalAttention, embedding, layerNorm, linear, mergeHeads, splitHeads } from "./ops";
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

/** GPT-2's "gelu_new": the tanh approximation of GELU. */
function gelu(x: tf.Tensor): tf.Tensor {
  const cube = tf.mul(tf.mul(x, x), x); // cheaper than tf.pow on every backend
  const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, cube)));
  return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
}

class Norm {
  private readonly weight: tf.Variable;
  private readonly bias?: tf.Variable;

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
  private readonly cAttnW: tf.Variable<tf.Rank.R2>;
  private readonly cAttnB: tf.Variable<tf.Rank.R1>;
  private readonly cProjW: tf.Variable<tf.Rank.R2>;
  private readonly cProjB: tf.Variable<tf.Rank.R1>;

  constructor(
    make: MakeParam,
    prefix: string,
    private readonly layer: number,
    private readonly config: ModelConfig,
  ) {
    const c = config.dModel;
    // GPT-2 scales the init of projections into the residual stream by 1/sqrt(2 * nLayers).
    const residualStd = 0.02 / Math.sqrt(2 * config.nLayers);
    this.cAttnW = make(`${prefix}.c_attn.weight`, [c, 3 * c], {
      normal: 0.02,
    }) as tf.Variable<tf.Rank.R2>;
    this.cAttnB = make(`${prefix}.c_attn.bias`, [3 * c], "zeros") as tf.Variable<tf.Rank.R1>;
    this.cProjW = make(`${prefix}.c_proj.weight`, [c, c], {
      normal: residualStd,
    }) as tf.Variable<tf.Rank.R2>;
    this.cProjB = make(`${prefix}.c_proj.bias`, [c], "zeros") as tf.Variable<tf.Rank.R1>;
  }

  forward(x: tf.Tensor3D, ctx: Context): tf.Tensor3D {
    const nh = this.config.nHeads;
    const qkv = linear(x, this.cAttnW, this.cAttnB) as tf.Tensor3D; // [B, T, 3C]
    if (ctx.paged) {
      const [batch, , threeC] = qkv.shape; // T = 1
      const y = ctx.paged.attend(this.layer, qkv.reshape([batch, threeC])); // [B, C]
      return linear(y.reshape([batch, 1, threeC / 3]), this.cProjW, this.cProjB) as tf.Tensor3D;
    }
    const [qh, k, v] = splitHeads(qkv, nh, 3); // [B, T, 3C] -> 3 x [B, nh, T, hs]
    let kh = k;
    let vh = v;
    if (ctx.cache) [kh, vh] = ctx.cache.append(this.layer, kh, vh); // [B, nh, past + T, hs]
    const y = ctx.padLeft
      ? paddedCausalAttention(qh, kh, vh, ctx.padLeft)
      : causalAttention(qh, kh, vh); // [B, nh, T, hs]
    const merged = mergeHeads(y); // [B, nh, T, hs] -> [B, T, C]
    return dropout(
      linear(merged, this.cProjW, this.cProjB),
      this.config.dropout,
      ctx,
    ) as tf.Tensor3D;
  }
}

class MLP {
  private readonly cFcW: tf.Variable<tf.Rank.R2>;
  private readonly cFcB: tf.Variable<tf.Rank.R1>;
  private readonly cProjW: tf.Variable<tf.Rank.R2>;
  private readonly cProjB: tf.Variable<tf.Rank.R1>;

  constructor(
    make: MakeParam,
    prefix: string,
    private readonly config: ModelConfig,
  ) {
    const c = config.dModel;
    const hidden = config.mlpRatio * c;
    this.cFcW = make(`${prefix}.c_fc.weight`, [c, hidden], {
      normal: 0.02,
    }) as tf.Variable<tf.Rank.R2>;
    this.cFcB = make(`${prefix}.c_fc.bias`, [hidden], "zeros") as tf.Variable<tf.Rank.R1>;
    this.cProjW = make(`${prefix}.c_proj.weight`, [hidden, c], {
      normal: 0.02 / Math.sqrt(2 * config.nLayers),
    }) as tf.Variable<tf.Rank.R2>;
    this.cProjB = make(`${prefix}.c_proj.bias`, [c], "zeros") as tf.Variable<tf.Rank.R1>;
  }

  forward(x: tf.Tensor3D, ctx: Context): tf.Tensor3D {
    const h = linear(x, this.cFcW, this.cFcB); // [B, T, 4C]
    const activated = this.config.activation === "gelu" ? gelu(h) : tf.relu(h);
    return dropout(
      linear(activated, this.cProjW, this.cProjB),
      this.config.dropout,
      ctx,
    ) as tf.Tensor3D; // [B, T, C]
  }
}

class Block {
  private readonly ln1: Norm;
  private readonly attn: CausalSelfAttention;
  private readonly ln2: Norm;
  private readonly mlp: MLP;

  constructor(make: MakeParam, layer: number, config: ModelConfig) {
    const prefix = `h.${layer}`;
    this.ln1 = new Norm(make, `${prefix}.ln_1`, config);
    this.attn = new CausalSelfAttention(make, `${prefix}.attn`, layer, config);
    this.ln2 = new Norm(make, `${prefix}.ln_2`, config);
    this.mlp = new MLP(make, `${prefix}.mlp`, config);
  }

  forward(x: tf.Tensor3D, ctx: Context): tf.Tensor3D {
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
      const head = this.lmHead ?? this.wte; // [V, C]
      const flat = normed.reshape([batch * time, this.config.dModel]) as tf.Tensor2D; // [B*T, C]
      const logits = tf.matMul(flat, head, false, true); // [B*T, V]
      return logits.reshape([batch, time, this.config.vocabSize]) as tf.Tensor3D;
    });
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

  /** Every weight under its Hugging Face GPT-2 name. The variables stay owned by the model. */
  namedWeights(): Map<string, tf.Variable> {
    return new Map(this.weights);
  }

  dispose(): void {
    if (this.disposed) return;
    for (const w of this.weights.values()) w.dispose();
    this.weights.clear();
    this.disposed = true;
  }
}

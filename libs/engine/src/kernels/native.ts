// The optional native addon (libs/engine/native, built by scripts/build-native.sh): OpenBLAS
// matrix products on Float32Array views. Absent or unloadable, the engine runs pure tfjs.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

export interface BlasInfo {
  /** openblas_get_config(), e.g. "OpenBLAS 0.3.21 ... SkylakeX MAX_THREADS=64". */
  config: string;
  /** The OpenBLAS core whose kernels run. */
  core: string;
  /** The core type the addon chose from CPU features; "" when OPENBLAS_CORETYPE was set. */
  chosenCore: string;
}

/**
 * What multiplies bfloat16 weights: AMX's tiles (Intel Xeon since Sapphire Rapids), AVX-512
 * BF16's pair products (AMD since Zen 4, Intel since Cooper Lake), or a plain loop elsewhere.
 */
export type Bf16Kernel = "amx" | "avx512bf16" | "plain";

/** Weights packed for decode steps: float32 panels (packPanels) or bfloat16 tiles (packBf16). */
export type PackedWeight = Float32Array | Uint16Array;

export interface NativeKernels {
  /**
   * Row-major out[i] = op(a[i]) @ op(b[i]); a[i]: [m, k] ([k, m] when transA), b[i]: [k, n]
   * ([n, k] when transB), out[i]: [m, n]. A batch of 1 broadcasts.
   */
  batchMatMul(
    a: Float32Array,
    b: Float32Array,
    out: Float32Array,
    batchA: number,
    batchB: number,
    m: number,
    n: number,
    k: number,
    transA: boolean,
    transB: boolean,
  ): void;
  /** out = x @ w + bias; x: [rows, inDim], w: [inDim, outDim]. */
  linear(
    x: Float32Array,
    w: Float32Array,
    bias: Float32Array | null,
    out: Float32Array,
    rows: number,
    inDim: number,
    outDim: number,
  ): void;
  /** packed[p][i][j] = w[i][p * 64 + j] (0 past outDim): the layout linearPanels reads. */
  packPanels(w: Float32Array, packed: Float32Array, inDim: number, outDim: number): void;
  /** bfloat16 tiles in AMX's order: the layout linearPanels reads from a Uint16Array. */
  packBf16(w: Float32Array, packed: Uint16Array, inDim: number, outDim: number): void;
  /** The loop bfloat16 products run on: the best the CPU has, unless setBf16Kernel chose one. */
  bf16Kernel(): Bf16Kernel;
  /** Caps the bfloat16 loop at `kernel` (the CPU's best below it); returns the one in use. */
  setBf16Kernel(kernel: Bf16Kernel): Bf16Kernel;
  /** out = x @ w + bias with w packed by packPanels or packBf16; the decode steps' products. */
  linearPanels(
    x: Float32Array,
    packed: Float32Array | Uint16Array,
    bias: Float32Array | null,
    out: Float32Array,
    rows: number,
    inDim: number,
    outDim: number,
  ): void;
  /** out[j] = sum over rows of x[i, j]. */
  columnSum(x: Float32Array, out: Float32Array, rows: number, cols: number): void;
  /** Per head: probs = causalSoftmax(scale q k^T), out = probs v. */
  attentionForward(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    out: Float32Array,
    probs: Float32Array,
    heads: number,
    tq: number,
    tk: number,
    hs: number,
    scale: number,
  ): void;
  attentionBackward(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    probs: Float32Array,
    dOut: Float32Array,
    dq: Float32Array,
    dk: Float32Array,
    dv: Float32Array,
    heads: number,
    tq: number,
    tk: number,
    hs: number,
    scale: number,
  ): void;
  /** y = layer norm (gamma, beta) or RMS norm (gamma; beta null) of each row of x [rows, cols]. */
  normRows(
    x: Float32Array,
    gamma: Float32Array,
    beta: Float32Array | null,
    y: Float32Array,
    rows: number,
    cols: number,
    eps: number,
  ): void;
  /** y = GPT-2's tanh GELU of x, n values. */
  geluForward(x: Float32Array, y: Float32Array, n: number): void;
  /** dx = dy * GELU'(x), n values. */
  geluBackward(x: Float32Array, dy: Float32Array, dx: Float32Array, n: number): void;
  layerNormForward(
    x: Float32Array,
    gamma: Float32Array,
    beta: Float32Array,
    out: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    rows: number,
    cols: number,
    eps: number,
  ): void;
  layerNormBackward(
    x: Float32Array,
    gamma: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    dy: Float32Array,
    dx: Float32Array,
    dgamma: Float32Array,
    dbeta: Float32Array,
    rows: number,
    cols: number,
  ): void;
  /** One part of src [b, t, parts, nh, hs] -> dst [b, nh, t, hs]. */
  toHeads(
    src: Float32Array,
    dst: Float32Array,
    b: number,
    t: number,
    parts: number,
    part: number,
    nh: number,
    hs: number,
  ): void;
  /** src [b, nh, t, hs] -> one part of dst [b, t, parts, nh, hs]. */
  fromHeads(
    src: Float32Array,
    dst: Float32Array,
    b: number,
    t: number,
    parts: number,
    part: number,
    nh: number,
    hs: number,
  ): void;
  /** nll[i] = logsumexp(logits[i]) - logits[i, targets[i]] (0 for targets out of range). */
  crossEntropyForward(
    logits: Float32Array,
    targets: Int32Array,
    nll: Float32Array,
    logSumExp: Float32Array,
    rows: number,
    classes: number,
  ): void;
  /** dLogits = dNll * (softmax(logits) - onehot(targets)). */
  crossEntropyBackward(
    logits: Float32Array,
    targets: Int32Array,
    logSumExp: Float32Array,
    dNll: Float32Array,
    dLogits: Float32Array,
    rows: number,
    classes: number,
  ): void;
  /** One AdamW step of one tensor (bc1, bc2: the bias corrections 1 - beta^t). */
  /**
   * One decode step over a paged KV cache (pools of float16 bits): row r's key and value
   * (thirds 2 and 3 of qkv[r], [3C]) are written at its position lengths[r], then each head attends to positions
   * 0..lengths[r]. Position p of row r is pool position table[r][p / blockSize] * blockSize +
   * p % blockSize. out: [rows, C].
   */
  pagedAttention(
    qkv: Float32Array,
    kPool: Uint16Array,
    vPool: Uint16Array,
    table: Int32Array,
    lengths: Int32Array,
    out: Float32Array,
    rows: number,
    nh: number,
    hs: number,
    blockSize: number,
    maxBlocks: number,
    poolPositions: number,
    scale: number,
  ): void;
  /**
   * One transformer block of a decode step on a paged cache and packed weights: out = h +
   * mlp(norm2(h)), h = x + proj(attention(qkv(norm1(x)))); x, out: [rows, C]. norm: 0 layer norm
   * (gamma, beta), 1 RMS norm (gamma; betas null); act: 0 tanh GELU, 1 ReLU.
   */
  decodeLayer(
    x: Float32Array,
    out: Float32Array,
    ln1g: Float32Array,
    ln1b: Float32Array | null,
    wQkv: Float32Array | Uint16Array,
    bQkv: Float32Array,
    wProj: Float32Array | Uint16Array,
    bProj: Float32Array,
    ln2g: Float32Array,
    ln2b: Float32Array | null,
    wFc: Float32Array | Uint16Array,
    bFc: Float32Array,
    wFc2: Float32Array | Uint16Array,
    bFc2: Float32Array,
    kPool: Uint16Array,
    vPool: Uint16Array,
    table: Int32Array,
    lengths: Int32Array,
    rows: number,
    c: number,
    nh: number,
    hidden: number,
    blockSize: number,
    maxBlocks: number,
    poolPositions: number,
    scale: number,
    eps: number,
    norm: 0 | 1,
    act: 0 | 1,
  ): void;
  /**
   * Copies prefilled keys or values (src: [N, nh, time, hs]) into rows' blocks: row r takes
   * counts[r] positions of src row sources[r] from starts[r] on as its positions 0.. (float16).
   */
  pagedStore(
    src: Float32Array,
    pool: Uint16Array,
    table: Int32Array,
    sources: Int32Array,
    starts: Int32Array,
    counts: Int32Array,
    rows: number,
    nh: number,
    time: number,
    hs: number,
    blockSize: number,
    maxBlocks: number,
    poolPositions: number,
  ): void;
  adamw(
    p: Float32Array,
    m: Float32Array,
    v: Float32Array,
    g: Float32Array,
    pOut: Float32Array,
    mOut: Float32Array,
    vOut: Float32Array,
    n: number,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    bc1: number,
    bc2: number,
  ): void;
  /** Threads for OpenBLAS and for the addon's own parallel loops (attention heads). */
  setThreads(n: number): void;
  getThreads(): number;
  blasInfo(): BlasInfo;
}

const ADDON_PATH = fileURLToPath(
  new URL("../../native/build/Release/chatrl_kernels.node", import.meta.url),
);

let cached: AddonLoad | undefined;

interface AddonLoad {
  kernels: NativeKernels | null;
  error: string | null;
}

/** Loads the addon at `path`; a missing or broken build is reported, never thrown. */
export function loadAddon(path: string): AddonLoad {
  try {
    return { kernels: createRequire(import.meta.url)(path) as NativeKernels, error: null };
  } catch (err) {
    return { kernels: null, error: err instanceof Error ? err.message : String(err) };
  }
}

/** The native kernels, or null when the addon is not built or cannot load (see nativeLoadError). */
export function loadNativeKernels(): NativeKernels | null {
  cached ??= loadAddon(ADDON_PATH);
  return cached.kernels;
}

/** Why loadNativeKernels() returned null, for logs and benchmarks. */
export function nativeLoadError(): string | null {
  loadNativeKernels();
  return cached?.error ?? null;
}

// Kernel overrides for the JavaScript-hosted backends (wasm, cpu). They register once per
// backend, and never on tfjs-node(-gpu), whose TensorFlow kernels are already native.
import * as tf from "@tensorflow/tfjs";
import { registerFusedKernels } from "./fused.ts";
import { rowGather } from "./gather.ts";
import { sharedIdentity } from "./identity.ts";
import { nativeBatchMatMul, transposingBatchMatMul } from "./matmul.ts";
import {
  type Bf16Kernel,
  loadNativeKernels,
  nativeLoadError,
  type PackedWeight,
} from "./native.ts";
import { unsortedSegmentSum } from "./segment-sum.ts";
import { dataAccess } from "./views.ts";

export { FUSED, partName } from "./fused.ts";
export type { Bf16Kernel, BlasInfo, NativeKernels, PackedWeight } from "./native.ts";
export { loadNativeKernels, nativeLoadError } from "./native.ts";

/** The backends whose kernels we override. */
const HOSTED_BACKENDS = new Set(["wasm", "cpu"]);

export interface KernelStatus {
  backend: string;
  /** Kernels replaced or added on this backend, e.g. ["BatchMatMul", "UnsortedSegmentSum"]. */
  kernels: string[];
  /** Whether the native addon (OpenBLAS) serves this backend's products and fused ops. */
  native: boolean;
  /** Why the native addon is not in use, when it is not. */
  nativeError: string | null;
}

const installed = new Map<string, KernelStatus>();
let enabled = true;

function replaceKernel(
  name: string,
  backendName: string,
  make: (old: tf.KernelFunc) => tf.KernelFunc,
) {
  const old = tf.getKernel(name, backendName);
  if (old === undefined) throw new Error(`backend ${backendName} has no ${name} kernel to replace`);
  tf.unregisterKernel(name, backendName);
  tf.registerKernel({
    kernelName: name,
    backendName,
    kernelFunc: make(old.kernelFunc),
    // The old kernel's setup (e.g. wasm cwrap of its C function) still feeds its fallback path.
    setupFunc: old.setupFunc,
    disposeFunc: old.disposeFunc,
  });
}

/**
 * Registers the fast kernels on `backendName` (default: the active backend) once; a no-op that
 * reports `kernels: []` on any backend other than wasm and cpu. Call after tf.setBackend().
 */
export function installFastKernels(backendName: string = tf.getBackend()): KernelStatus {
  const done = installed.get(backendName);
  if (done) return done;
  const status: KernelStatus = {
    backend: backendName,
    kernels: [],
    native: false,
    nativeError: null,
  };
  if (HOSTED_BACKENDS.has(backendName)) {
    const native = loadNativeKernels();
    if (native) {
      replaceKernel("BatchMatMul", backendName, (old) =>
        nativeBatchMatMul(native, backendName, old, () => enabled),
      );
      status.kernels.push("BatchMatMul", ...registerFusedKernels(native, backendName));
      status.native = true;
    } else {
      status.nativeError = nativeLoadError();
      if (backendName === "wasm") {
        const transpose = tf.getKernel("Transpose", backendName)?.kernelFunc;
        if (transpose) {
          replaceKernel("BatchMatMul", backendName, (old) =>
            transposingBatchMatMul(transpose, old),
          );
          status.kernels.push("BatchMatMul");
        }
      }
    }
    if (backendName === "wasm") {
      replaceKernel("Identity", backendName, sharedIdentity);
      replaceKernel("GatherV2", backendName, (old) => rowGather(backendName, old));
      status.kernels.push("Identity", "GatherV2");
    }
    // wasm lacks UnsortedSegmentSum (the gather gradient); the cpu backend's builds a mask per
    // segment, quadratic in the vocabulary. One loop over the rows serves both.
    const segmentSum = unsortedSegmentSum(backendName);
    if (tf.getKernel("UnsortedSegmentSum", backendName) === undefined) {
      tf.registerKernel({ kernelName: "UnsortedSegmentSum", backendName, kernelFunc: segmentSum });
    } else {
      replaceKernel("UnsortedSegmentSum", backendName, () => segmentSum);
    }
    status.kernels.push("UnsortedSegmentSum");
  }
  installed.set(backendName, status);
  return status;
}

/**
 * Whether ops.ts should take its fused native path on the active backend (installing the
 * kernels on first use, for callers that set the backend without initBackend).
 */
export function fusedKernelsActive(): boolean {
  return enabled && installFastKernels(tf.getBackend()).native;
}

/**
 * Turns the native products and fused ops off (false) or back on: the plain tfjs path, for
 * comparing the two on the same weights. Kernels that a backend lacks stay registered.
 */
export function setFastKernelsEnabled(on: boolean): void {
  enabled = on;
}

/**
 * Copies prefilled keys or values (src: [N, nh, T, hs]) into a paged KV cache's pool ([positions,
 * C] of float16 bits) in place, on the native addon: row r of `table` takes counts[r] positions
 * of src row sources[r] from starts[r] on. Only where fusedKernelsActive().
 */
export function pagedStore(
  src: tf.Tensor4D,
  pool: Uint16Array,
  table: Int32Array,
  rows: {
    sources: Int32Array;
    starts: Int32Array;
    counts: Int32Array;
    blockSize: number;
    maxBlocks: number;
  },
): void {
  const native = loadNativeKernels();
  if (!native) throw new Error("pagedStore needs the native addon");
  const io = dataAccess(tf.getBackend(), tf.backend());
  const [, nh, time, hs] = src.shape;
  native.pagedStore(
    io.view(src) as Float32Array,
    pool,
    table,
    rows.sources,
    rows.starts,
    rows.counts,
    rows.sources.length,
    nh,
    time,
    hs,
    rows.blockSize,
    rows.maxBlocks,
    pool.length / (nh * hs),
  );
}

/** Columns per panel of packed weights (the addon's kPanel). */
const PANEL = 64;

/**
 * The precision of the weights a served model's steps multiply by: float32 (the checkpoint's),
 * or bfloat16 (half the bytes per step, and twice or more the products per cycle where the CPU
 * multiplies bfloat16: AMX, AVX-512 BF16).
 */
export type DecodeDtype = "float32" | "bfloat16";

/**
 * A weight [in, out] packed for the decode steps' products (linearPanels): float32 panels of 64
 * columns, [panels, in, 64], or bfloat16 in AMX's tile order, [out / 16][in / 32][16][16][2].
 * Null where the native kernels are not active (the products then stay tfjs's, in float32).
 */
export function packWeight(w: tf.Tensor2D, dtype: DecodeDtype): PackedWeight | null {
  const native = loadNativeKernels();
  if (!native || !fusedKernelsActive()) return null;
  const [inDim, outDim] = w.shape;
  const data = w.dataSync() as Float32Array;
  if (dtype === "bfloat16") {
    const packed = new Uint16Array(Math.ceil(outDim / 16) * Math.ceil(inDim / 32) * 512);
    native.packBf16(data, packed, inDim, outDim);
    return packed;
  }
  const packed = new Float32Array(Math.ceil(outDim / PANEL) * inDim * PANEL);
  native.packPanels(data, packed, inDim, outDim);
  return packed;
}

/** The loop bfloat16 products run on ("plain" also where the native addon is not loaded). */
export function nativeBf16Kernel(): Bf16Kernel {
  return loadNativeKernels()?.bf16Kernel() ?? "plain";
}

/**
 * Caps the bfloat16 loop at `kernel` (tests compare the loops); the CPU's best when it lacks
 * that one. Returns the loop in use.
 */
export function setNativeBf16Kernel(kernel: Bf16Kernel): Bf16Kernel {
  return loadNativeKernels()?.setBf16Kernel(kernel) ?? "plain";
}

/**
 * The dtype "auto" stands for (vLLM's --dtype auto serves a float32 checkpoint in half
 * precision): bfloat16 where the CPU multiplies it natively (AMX or AVX-512 BF16), float32
 * elsewhere, where the plain bfloat16 loop would be slower than float32's.
 */
export function autoDecodeDtype(): DecodeDtype {
  return nativeBf16Kernel() !== "plain" && fusedKernelsActive() ? "bfloat16" : "float32";
}

/**
 * A tensor's float32 data on the active JavaScript-hosted backend (wasm, cpu), without a copy,
 * for native calls made outside tfjs. Take it after any tfjs allocation: allocating can move the
 * wasm heap.
 */
export function tensorView(t: tf.Tensor): Float32Array {
  return dataAccess(tf.getBackend(), tf.engine().backend).view(t) as Float32Array;
}

/** Threads for OpenBLAS and the addon's parallel loops (no-op without the native addon). */
export function setNativeThreads(n: number): void {
  loadNativeKernels()?.setThreads(n);
}

/** Threads the native kernels use, or 0 without the native addon. */
export function nativeThreads(): number {
  return loadNativeKernels()?.getThreads() ?? 0;
}

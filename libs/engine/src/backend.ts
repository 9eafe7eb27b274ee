// Picks the fastest TensorFlow.js backend this machine can load:
// tfjs-node-gpu (CUDA), then tfjs-node (native TensorFlow on CPU), then wasm, then plain JS.
// The native packages are optional dependencies: they are only imported when present.
import { availableParallelism } from "node:os";
import * as tf from "@tensorflow/tfjs";
import {
  type BlasInfo,
  installFastKernels,
  loadNativeKernels,
  nativeThreads,
} from "./kernels/index.ts";

export { tf };

export type BackendName = "tensorflow-gpu" | "tensorflow" | "wasm" | "cpu";

export const BACKEND_ORDER: readonly BackendName[] = [
  "tensorflow-gpu",
  "tensorflow",
  "wasm",
  "cpu",
];

export type BackendInfo = {
  name: BackendName;
  threads: number;
  /** Kernels ./kernels replaced or added on this backend (wasm and cpu only), e.g. the gather gradient wasm lacks. */
  kernels: string[];
  /** Whether the native OpenBLAS addon serves this backend's products and fused ops. */
  native: boolean;
  /** Why the addon is not in use on a wasm or cpu backend (not built, no OpenBLAS ...), else null. */
  nativeError: string | null;
  /** The OpenBLAS build and core the addon runs, when it does. */
  blas: BlasInfo | null;
};

type Candidate = {
  /** What must be importable for this backend. */
  module?: string;
  /** The name the backend registers with tfjs. */
  tfName: string;
};

const CANDIDATES: Record<BackendName, Candidate> = {
  "tensorflow-gpu": { module: "@tensorflow/tfjs-node-gpu", tfName: "tensorflow" },
  tensorflow: { module: "@tensorflow/tfjs-node", tfName: "tensorflow" },
  wasm: { module: "@tensorflow/tfjs-backend-wasm", tfName: "wasm" },
  cpu: { tfName: "cpu" },
};

let current: BackendInfo | undefined;
/** The imported backend packages, by name, for backend-specific queries such as thread counts. */
const loaded = new Map<BackendName, Record<string, unknown>>();

/**
 * Loads and activates a backend. Without `prefer`, the first of BACKEND_ORDER that loads wins;
 * with it, exactly that backend or an error saying why it could not load.
 * Calling it again returns the active backend (or switches, when `prefer` names another one).
 */
export async function initBackend(prefer?: BackendName): Promise<BackendInfo> {
  if (prefer !== undefined && !(prefer in CANDIDATES)) {
    throw new Error(`unknown backend "${prefer}"; expected one of ${BACKEND_ORDER.join(", ")}`);
  }
  // Callers in one process (api, worker, inference plugins) may ask at the same time: one at a time.
  const result = queue.then(() => activate(prefer));
  queue = result.catch(() => undefined);
  return result;
}

let queue: Promise<unknown> = Promise.resolve();

async function activate(prefer?: BackendName): Promise<BackendInfo> {
  if (current && (prefer === undefined || prefer === current.name)) return current;
  const order = prefer ? [prefer] : BACKEND_ORDER;
  const failures: string[] = [];
  for (const name of order) {
    const reason = await tryActivate(name);
    if (reason === undefined) {
      const { kernels, native, nativeError } = installFastKernels(CANDIDATES[name].tfName);
      const blas = native ? (loadNativeKernels()?.blasInfo() ?? null) : null;
      current = { name, threads: threadsOf(name), kernels, native, nativeError, blas };
      return current;
    }
    failures.push(`${name}: ${reason}`);
  }
  throw new Error(`no TensorFlow.js backend could be loaded (${failures.join("; ")})`);
}

/** Returns undefined on success, otherwise why the backend is unusable. */
async function tryActivate(name: BackendName): Promise<string | undefined> {
  const { module, tfName } = CANDIDATES[name];
  if (module) {
    try {
      // A variable specifier keeps bundlers and tsc from requiring the optional package.
      loaded.set(name, await import(/* @vite-ignore */ module));
    } catch (err) {
      return `cannot import ${module} (${(err as Error).message.split("\n")[0]})`;
    }
  }
  if (tf.findBackendFactory(tfName) === null)
    return `${module ?? tfName} did not register backend "${tfName}"`;
  try {
    if (!(await tf.setBackend(tfName))) return `backend "${tfName}" failed to initialize`;
    await tf.ready();
  } catch (err) {
    return `backend "${tfName}" failed to initialize (${(err as Error).message})`;
  }
  if (name === "tensorflow-gpu" && !hasGpu()) return "no CUDA device visible to TensorFlow";
  return undefined;
}

function hasGpu(): boolean {
  // tfjs-node-gpu falls back to CPU silently when CUDA is missing; its binding says which it got.
  const binding = (tf.backend() as unknown as { binding?: { isUsingGpuDevice?: () => boolean } })
    .binding;
  return binding?.isUsingGpuDevice?.() ?? true;
}

function threadsOf(name: BackendName): number {
  switch (name) {
    case "wasm":
    case "cpu": {
      // With the native addon, the heavy kernels run on its thread pool; otherwise wasm has its
      // own (one thread in Node) and the plain JS backend runs on the main thread.
      const native = nativeThreads();
      if (native > 0) return native;
      const getThreadsCount = loaded.get("wasm")?.getThreadsCount as (() => number) | undefined;
      return name === "wasm" ? (getThreadsCount?.() ?? 1) : 1;
    }
    default:
      return availableParallelism(); // TensorFlow's intra-op pool uses every core
  }
}

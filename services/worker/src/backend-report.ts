// What a worker trains on, said once at start (log) and on every /readyz: the tensor backend,
// and on wasm or cpu whether the native OpenBLAS kernels serve it (about 50 times faster than
// pure TensorFlow.js; docs/decisions/0004-engine-kernels.md).
import type { BackendInfo } from "@chatrl/engine";

export type BackendReport = {
  name: BackendInfo["name"];
  threads: number;
  /** True when the native OpenBLAS kernels serve the products and fused ops. */
  native_kernels: boolean;
  /** The OpenBLAS core whose kernels run (e.g. "SkylakeX"), null without the addon. */
  blas_core: string | null;
  /** Kernels chatrl replaced or added on this backend. */
  kernels: string[];
  /** Why the native kernels do not serve a wasm or cpu backend, else null. */
  native_error: string | null;
};

/** True for the backends the native kernels exist for (tfjs-node brings TensorFlow's own). */
export function needsNativeKernels(info: BackendInfo): boolean {
  return info.name === "wasm" || info.name === "cpu";
}

export function backendReport(info: BackendInfo): BackendReport {
  return {
    name: info.name,
    threads: info.threads,
    native_kernels: info.native,
    blas_core: info.blas?.core ?? null,
    kernels: info.kernels,
    native_error: needsNativeKernels(info) ? info.nativeError : null,
  };
}

/** One line for an operator: "wasm, 2 threads, native OpenBLAS kernels (SkylakeX)". */
export function describeBackend(info: BackendInfo): string {
  const base = `${info.name}, ${info.threads} thread${info.threads === 1 ? "" : "s"}`;
  if (!needsNativeKernels(info)) return `${base}, TensorFlow's own kernels`;
  if (info.native) return `${base}, native OpenBLAS kernels (${info.blas?.core ?? "unknown core"})`;
  return (
    `${base}, WITHOUT the native OpenBLAS kernels (${info.nativeError ?? "not loaded"}): ` +
    "training runs on pure TensorFlow.js, about 50 times slower; build them with " +
    "scripts/build-native.sh"
  );
}

/** Thrown at start when CHATRL_REQUIRE_NATIVE_KERNELS is set and the kernels did not load. */
export class NativeKernelsMissingError extends Error {
  constructor(info: BackendInfo) {
    super(
      `worker: CHATRL_REQUIRE_NATIVE_KERNELS is set but the ${info.name} backend runs ` +
        `without the native OpenBLAS kernels: ${info.nativeError ?? "not loaded"}`,
    );
    this.name = "NativeKernelsMissingError";
  }
}

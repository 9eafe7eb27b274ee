import { describe, expect, it } from "vitest";
import { BACKEND_ORDER, initBackend, tf } from "../src/index";
import { loadNativeKernels, nativeLoadError } from "../src/kernels/index.ts";

describe("initBackend", () => {
  it("activates the first backend that loads and reports its threads", async () => {
    const info = await initBackend();
    expect(BACKEND_ORDER).toContain(info.name);
    expect(info.threads).toBeGreaterThanOrEqual(1);
    expect(await initBackend()).toEqual(info); // idempotent
  });

  it("says whether the native OpenBLAS kernels serve it, and why not when they do not", async () => {
    const info = await initBackend("wasm");
    const addon = loadNativeKernels();
    expect(info.native).toBe(addon !== null);
    if (addon) {
      expect(info.nativeError).toBeNull();
      expect(info.kernels).toContain("BatchMatMul");
      expect(info.blas?.core).toBe(addon.blasInfo().core);
    } else {
      expect(info.nativeError).toBe(nativeLoadError());
      expect(info.blas).toBeNull();
    }
  });

  it("switches to a preferred backend that loads", async () => {
    const info = await initBackend("cpu");
    expect(info.name).toBe("cpu");
    expect(info.threads).toBeGreaterThanOrEqual(1);
    expect(tf.getBackend()).toBe("cpu");
    expect((await initBackend("wasm")).name).toBe("wasm");
    expect(tf.getBackend()).toBe("wasm");
    // Requests made at the same time are served in order: the last one asked for is active.
    const [first, second] = await Promise.all([initBackend("cpu"), initBackend("wasm")]);
    expect([first.name, second.name]).toEqual(["cpu", "wasm"]);
    expect(tf.getBackend()).toBe("wasm");
  });

  it("fails clearly when a preferred backend cannot load, and on unknown names", async () => {
    let tfjsNode = true;
    try {
      await import(/* @vite-ignore */ ["@tensorflow", "tfjs-node"].join("/"));
    } catch {
      tfjsNode = false;
    }
    if (!tfjsNode) {
      await expect(initBackend("tensorflow")).rejects.toThrow(
        /tensorflow: cannot import @tensorflow\/tfjs-node/,
      );
    }
    // @ts-expect-error: not a backend name
    await expect(initBackend("tpu")).rejects.toThrow(/unknown backend "tpu"/);
  });
});

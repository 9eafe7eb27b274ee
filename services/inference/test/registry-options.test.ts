import { ConfigError } from "@chatrl/contracts";
import { describe, expect, it } from "vitest";
import { loadRegistryOptions } from "../src/registry-options.ts";

describe("inference limits from the environment", () => {
  it("reads the set variables and leaves the others to the defaults", () => {
    expect(
      loadRegistryOptions({
        CHATRL_INFERENCE_MAX_ROWS: "16",
        CHATRL_INFERENCE_MAX_KV_TOKENS: "4096",
        CHATRL_INFERENCE_MAX_QUEUED: "0",
        CHATRL_INFERENCE_MAX_PREFILL_TOKENS: "512",
        CHATRL_INFERENCE_MAX_MODEL_BYTES: "",
        CHATRL_INFERENCE_DTYPE: "float32",
      }),
    ).toEqual({
      maxRunningRows: 16,
      maxKvTokens: 4096,
      maxQueuedRequests: 0,
      maxPrefillTokens: 512,
      dtype: "float32",
    });
  });

  it("names every bad variable", () => {
    const bad = () =>
      loadRegistryOptions({
        CHATRL_INFERENCE_MAX_ROWS: "0",
        CHATRL_INFERENCE_REFRESH_MS: "soon",
        CHATRL_INFERENCE_DTYPE: "float16",
      });
    expect(bad).toThrow(ConfigError);
    expect(bad).toThrow(
      /CHATRL_INFERENCE_MAX_ROWS must be an integer > 0[\s\S]*CHATRL_INFERENCE_REFRESH_MS[\s\S]*CHATRL_INFERENCE_DTYPE must be one of auto, float32, bfloat16, got "float16"/,
    );
  });
});

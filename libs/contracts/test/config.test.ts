import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../src/config.ts";

describe("loadConfig", () => {
  it("gives the documented defaults when nothing is set", () => {
    expect(loadConfig({})).toEqual({
      databaseUrl: undefined,
      dataDir: "./data",
      redisUrl: "redis://127.0.0.1:6379",
      queuePrefix: "chatrl",
      apiPort: 8080,
      inferencePort: 8000,
      workerHealthPort: undefined,
      host: "0.0.0.0",
      backend: undefined,
      apiKeys: [],
      queues: ["sft", "reward", "ppo"],
      logLevel: "info",
      maxUploadBytes: 50 * 1024 * 1024,
      rateLimitMax: 6000,
      rateLimitWindowMs: 60_000,
      timeouts: {
        headersMs: 10_000,
        requestMs: 600_000,
        idleMs: 120_000,
        keepAliveMs: 10_000,
        minBodyBytesPerSecond: 16 * 1024,
        bodyGraceMs: 10_000,
      },
    });
  });

  it("reads every variable, splitting comma lists and ignoring empty values", () => {
    const config = loadConfig({
      DATABASE_URL: "postgresql://postgres@127.0.0.1:5432/chatrl",
      REDIS_URL: "redis://redis:6379/2",
      CHATRL_QUEUE_PREFIX: "test_1",
      CHATRL_API_PORT: "9090",
      CHATRL_BACKEND: "wasm",
      CHATRL_API_KEYS: " key-one, ,key-two ",
      CHATRL_QUEUES: "sft, ppo",
      CHATRL_LOG_LEVEL: "warn",
      CHATRL_DATA_DIR: "",
      PATH: "/usr/bin",
    });
    expect(config).toMatchObject({
      databaseUrl: "postgresql://postgres@127.0.0.1:5432/chatrl",
      dataDir: "./data",
      redisUrl: "redis://redis:6379/2",
      queuePrefix: "test_1",
      apiPort: 9090,
      backend: "wasm",
      apiKeys: ["key-one", "key-two"],
      queues: ["sft", "ppo"],
      logLevel: "warn",
    });
  });

  it("names every bad variable in one error", () => {
    let error: unknown;
    try {
      loadConfig({ CHATRL_API_PORT: "eighty", CHATRL_QUEUES: "sft,dpo", REDIS_URL: "localhost" });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toContain("CHATRL_API_PORT");
    expect(message).toContain("CHATRL_QUEUES");
    expect(message).toContain("REDIS_URL");
  });
});

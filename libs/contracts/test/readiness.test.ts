import { describe, expect, it } from "vitest";
import { ApiError, checkReadiness } from "../src/index.ts";

describe("checkReadiness", () => {
  it("answers ready with every dependency named ok when all probes resolve", async () => {
    await expect(
      checkReadiness({ postgres: async () => 1, redis: async () => "PONG" }),
    ).resolves.toEqual({ status: "ready", postgres: "ok", redis: "ok" });
  });

  it("names each failing dependency, including one that never answers, in a 503", async () => {
    const error = await checkReadiness(
      {
        postgres: () => new Promise(() => {}), // drops packets: never settles
        redis: async () => {
          throw new Error("connect ECONNREFUSED 127.0.0.1:6390\n    at stack line");
        },
        other: async () => "fine",
      },
      50,
      { detail: true },
    ).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error).toMatchObject({ statusCode: 503, code: "not_ready" });
    expect((error as ApiError).message).toBe(
      "Not ready: postgres: no answer within 50 ms; redis: connect ECONNREFUSED 127.0.0.1:6390",
    );
  });

  it("names only the failing dependency, not why (hosts and ports), without detail", async () => {
    const error = await checkReadiness({
      postgres: async () => 1,
      redis: async () => {
        throw new Error("Redis at redis://10.0.3.7:6379 is unreachable");
      },
    }).catch((e: unknown) => e);
    expect((error as ApiError).message).toBe("Not ready: redis");
  });
});

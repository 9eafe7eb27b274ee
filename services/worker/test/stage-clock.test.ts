import { describe, expect, it } from "vitest";
import { StageClock } from "../src/stage-clock.ts";

describe("StageClock", () => {
  it("counts asynchronous device work until it settles, on top of earlier attempts' totals", async () => {
    const clock = new StageClock({ wallSeconds: 10, deviceSeconds: 5, tokens: 100 }, 3600);
    const { result, seconds } = await clock.timeDevice(
      () => new Promise<string>((resolve) => setTimeout(() => resolve("done"), 60)),
    );
    expect(result).toBe("done");
    expect(seconds).toBeGreaterThanOrEqual(0.05);
    const sync = await clock.timeDevice(() => 7);
    expect(sync.result).toBe(7);
    clock.addTokens(20);
    const totals = clock.totals();
    expect(totals.deviceSeconds).toBeCloseTo(5 + seconds + sync.seconds, 10);
    expect(totals.tokens).toBe(120);
    expect(totals.wallSeconds).toBeGreaterThanOrEqual(10 + seconds);
    // $3600 an hour is $1 a device second.
    expect(totals.costUsd).toBeCloseTo(totals.deviceSeconds, 10);
  });
});

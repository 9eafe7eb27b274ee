import { describe, expect, it } from "vitest";
import {
  type GenerationResult,
  GenerationQueue,
  type RunBatch,
  type SamplingOptions,
} from "../src/generation-queue.ts";

const options: SamplingOptions = { maxTokens: 4, temperature: 1, topP: 1, stop: [] };

/** A stand-in for the engine's generate that answers each prompt upper-cased, after a delay. */
function recordingRun(delayMs = 10) {
  const calls: { prompts: string[]; options: SamplingOptions }[] = [];
  const run: RunBatch = async (prompts, opts, onToken) => {
    calls.push({ prompts, options: opts });
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    for (const [i, p] of prompts.entries()) onToken(i, p.toUpperCase());
    return prompts.map(
      (p): GenerationResult => ({
        text: p.toUpperCase(),
        promptTokens: p.length,
        completionTokens: p.length,
        finishReason: "length",
      }),
    );
  };
  return { calls, run };
}

describe("GenerationQueue", () => {
  it("answers requests submitted together with one batched call, each with its own result", async () => {
    const { calls, run } = recordingRun();
    const queue = new GenerationQueue(run, { maxBatchSize: 8, batchWindowMs: 0 });
    const results = await Promise.all(["a", "b", "c"].map((p) => queue.submit(p, options)));
    expect(results.map((r) => r.text)).toEqual(["A", "B", "C"]);
    expect(calls.map((c) => c.prompts)).toEqual([["a", "b", "c"]]);
  });

  it("waits the batch window for more requests when idle", async () => {
    const { calls, run } = recordingRun();
    const queue = new GenerationQueue(run, { maxBatchSize: 8, batchWindowMs: 40 });
    const first = queue.submit("a", options);
    await new Promise((resolve) => setTimeout(resolve, 10));
    await Promise.all([first, queue.submit("b", options)]);
    expect(calls.map((c) => c.prompts)).toEqual([["a", "b"]]);
  });

  it("batches requests that arrive during a generation into the next call", async () => {
    const { calls, run } = recordingRun(50);
    const queue = new GenerationQueue(run, { maxBatchSize: 8, batchWindowMs: 0 });
    const first = queue.submit("first", options);
    await new Promise((resolve) => setTimeout(resolve, 10)); // the first call is running now
    const later = [queue.submit("x", options), queue.submit("y", options)];
    await Promise.all([first, ...later]);
    expect(calls.map((c) => c.prompts)).toEqual([["first"], ["x", "y"]]);
  });

  it("keeps requests that sample differently in separate calls and respects the batch size", async () => {
    const { calls, run } = recordingRun();
    const queue = new GenerationQueue(run, { maxBatchSize: 2, batchWindowMs: 0 });
    const seeded = { ...options, seed: 7 };
    await Promise.all([
      queue.submit("a", options),
      queue.submit("b", seeded),
      queue.submit("c", options),
      queue.submit("d", options),
    ]);
    expect(calls.map((c) => c.prompts)).toEqual([["a", "c"], ["b"], ["d"]]);
    expect(calls[1].options.seed).toBe(7);
  });

  it("runs each seeded request in a call of its own, so its seed reproduces its reply", async () => {
    const { calls, run } = recordingRun();
    const queue = new GenerationQueue(run, { maxBatchSize: 8, batchWindowMs: 0 });
    const seeded = { ...options, seed: 7 };
    await Promise.all([queue.submit("a", seeded), queue.submit("b", seeded)]);
    expect(calls.map((c) => c.prompts)).toEqual([["a"], ["b"]]);
  });

  it("routes streamed text to the request it belongs to", async () => {
    const { run } = recordingRun();
    const queue = new GenerationQueue(run, { maxBatchSize: 8, batchWindowMs: 0 });
    const seen: Record<string, string> = { a: "", b: "" };
    await Promise.all([
      queue.submit("a", options, (t) => {
        seen.a += t;
      }),
      queue.submit("b", options, (t) => {
        seen.b += t;
      }),
    ]);
    expect(seen).toEqual({ a: "A", b: "B" });
  });

  it("fails every request of a failed call and keeps serving later ones", async () => {
    let fail = true;
    const queue = new GenerationQueue(
      async (prompts) => {
        if (fail) throw new Error("out of memory");
        return prompts.map((p) => ({
          text: p,
          promptTokens: 1,
          completionTokens: 1,
          finishReason: "stop",
        }));
      },
      { maxBatchSize: 8, batchWindowMs: 0 },
    );
    const failed = await Promise.allSettled([
      queue.submit("a", options),
      queue.submit("b", options),
    ]);
    expect(failed.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    fail = false;
    await expect(queue.submit("c", options)).resolves.toMatchObject({ text: "c" });
  });

  it("drops a request whose client went away while it waited, generating nothing for it", async () => {
    const { calls, run } = recordingRun(50);
    const queue = new GenerationQueue(run, { maxBatchSize: 8, batchWindowMs: 0 });
    const first = queue.submit("first", options);
    await new Promise((resolve) => setTimeout(resolve, 10)); // the first call is running now
    const gone = new AbortController();
    const abandoned = queue.submit("abandoned", options, undefined, gone.signal);
    const kept = queue.submit("kept", options, undefined, new AbortController().signal);
    gone.abort(new Error("the client went away"));
    await expect(abandoned).rejects.toThrow("the client went away");
    await Promise.all([first, kept]);
    expect(calls.map((c) => c.prompts)).toEqual([["first"], ["kept"]]);
    // Aborting once generation has started changes nothing for the batch.
    const late = new AbortController();
    const running = queue.submit("late", options, undefined, late.signal);
    await new Promise((resolve) => setTimeout(resolve, 10));
    late.abort();
    await expect(running).resolves.toMatchObject({ text: "LATE" });
  });
});

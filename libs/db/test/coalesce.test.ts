import { describe, expect, it } from "vitest";
import { coalesceReads, groupCalls } from "../src/coalesce.ts";

/** A promise and the functions that settle it. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const tick = () => new Promise((r) => setImmediate(r));

describe("coalesceReads", () => {
  it("shares one query among reads that wait for it, and never answers a read from a query that started before it", async () => {
    const queries: { key: string; answer: ReturnType<typeof deferred<string>> }[] = [];
    const read = coalesceReads((key: string) => {
      const answer = deferred<string>();
      queries.push({ key, answer });
      return answer.promise;
    });
    const first = read("run_a");
    expect(queries).toHaveLength(1);
    // Asked while the first query runs: the data may have changed since it started, so these
    // wait for a query of their own, which they share.
    const second = read("run_a");
    const third = read("run_a");
    const other = read("run_b");
    expect(queries.map((q) => q.key)).toEqual(["run_a", "run_b"]);
    queries[0].answer.resolve("before the write");
    await tick();
    expect(queries.map((q) => q.key)).toEqual(["run_a", "run_b", "run_a"]);
    queries[2].answer.resolve("after the write");
    queries[1].answer.resolve("b");
    expect(await first).toBe("before the write");
    expect(await second).toBe("after the write");
    expect(await third).toBe("after the write");
    expect(await other).toBe("b");
    // Nothing is remembered: a read after all that queries again.
    const fourth = read("run_a");
    expect(queries).toHaveLength(4);
    queries[3].answer.resolve("fresh");
    expect(await fourth).toBe("fresh");
  });

  it("gives a failed query's error to every read sharing it, and queries again afterwards", async () => {
    let calls = 0;
    const gate = deferred<void>();
    const read = coalesceReads(async (key: string) => {
      calls += 1;
      if (calls === 2) {
        await gate.promise;
        throw new Error("database down");
      }
      return `${key}#${calls}`;
    });
    const first = read("x");
    const [second, third] = [read("x"), read("x")];
    expect(await first).toBe("x#1");
    gate.resolve();
    await expect(second).rejects.toThrow("database down");
    await expect(third).rejects.toThrow("database down");
    expect(await read("x")).toBe("x#3");
  });
});

describe("groupCalls", () => {
  it("runs a call alone at once, and the calls made meanwhile together in one batch, in order", async () => {
    const batches: number[][] = [];
    const gates: ReturnType<typeof deferred<void>>[] = [];
    const double = groupCalls(async (inputs: number[]) => {
      batches.push(inputs);
      const gate = deferred<void>();
      gates.push(gate);
      await gate.promise;
      return inputs.map((n) => n * 2);
    });
    const first = double(1);
    const rest = [double(2), double(3), double(4)];
    expect(batches).toEqual([[1]]);
    gates[0].resolve();
    expect(await first).toBe(2);
    await tick();
    expect(batches).toEqual([[1], [2, 3, 4]]);
    gates[1].resolve();
    expect(await Promise.all(rest)).toEqual([4, 6, 8]);
  });

  it("runs up to `concurrency` batches at once and at most `maxBatch` calls a batch", async () => {
    const batches: string[][] = [];
    const gates: ReturnType<typeof deferred<void>>[] = [];
    const echo = groupCalls(
      async (inputs: string[]) => {
        batches.push(inputs);
        const gate = deferred<void>();
        gates.push(gate);
        await gate.promise;
        return inputs;
      },
      { concurrency: 2, maxBatch: 2 },
    );
    const calls = ["a", "b", "c", "d", "e"].map((s) => echo(s));
    expect(batches).toEqual([["a"], ["b"]]);
    gates[0].resolve();
    await tick();
    expect(batches).toEqual([["a"], ["b"], ["c", "d"]]);
    gates[1].resolve();
    await tick();
    expect(batches).toEqual([["a"], ["b"], ["c", "d"], ["e"]]);
    for (const gate of gates.slice(2)) gate.resolve();
    expect(await Promise.all(calls)).toEqual(["a", "b", "c", "d", "e"]);
  });

  it("fails only the call whose input fails: a failed batch runs again one call at a time", async () => {
    const batches: string[][] = [];
    const gate = deferred<void>();
    const store = groupCalls(async (inputs: string[]) => {
      batches.push(inputs);
      if (inputs[0] === "first") await gate.promise;
      if (inputs.includes("bad")) throw new Error(`cannot store ${inputs.join("+")}`);
      return inputs.map((s) => s.toUpperCase());
    });
    const first = store("first");
    const [good, bad, also] = [store("good"), store("bad"), store("also")];
    gate.resolve();
    expect(await first).toBe("FIRST");
    expect(await good).toBe("GOOD");
    await expect(bad).rejects.toThrow("cannot store bad");
    expect(await also).toBe("ALSO");
    expect(batches).toEqual([["first"], ["good", "bad", "also"], ["good"], ["bad"], ["also"]]);
  });
});

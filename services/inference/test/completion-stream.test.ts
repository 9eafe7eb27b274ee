import { describe, expect, it } from "vitest";
import { CompletionStream } from "../src/completion-stream.ts";

function collect(stop: string[]) {
  const deltas: string[] = [];
  const stream = new CompletionStream(stop, (d) => deltas.push(d));
  return { deltas, stream };
}

describe("CompletionStream", () => {
  it("sends text as it arrives when no stop string can begin in it", () => {
    const { deltas, stream } = collect(["<|user|>"]);
    for (const piece of ["Hel", "lo", " world"]) stream.push(piece);
    stream.finish("Hello world");
    expect(deltas).toEqual(["Hel", "lo", " world"]);
  });

  it("holds back a possible stop string and never sends the text the answer drops", () => {
    const { deltas, stream } = collect(["<|user|>"]);
    for (const piece of ["Hi", " <", "|us", "er|>", "more"]) stream.push(piece);
    stream.finish("Hi ");
    expect(deltas.join("")).toBe("Hi ");
    expect(deltas).toEqual(["Hi", " "]);
  });

  it("releases held-back text once it cannot be a stop string", () => {
    const { deltas, stream } = collect(["<|user|>"]);
    stream.push("a <");
    expect(deltas).toEqual(["a "]);
    stream.push("b");
    expect(deltas).toEqual(["a ", "<b"]);
    stream.finish("a <b");
    expect(deltas.join("")).toBe("a <b");
  });

  it("waits for the last byte of a character split across tokens", () => {
    const { deltas, stream } = collect([]);
    stream.push("caf\uFFFD");
    expect(deltas).toEqual(["caf"]);
    stream.finish("café");
    expect(deltas.join("")).toBe("café");
  });

  it("refuses a final text that contradicts what was already sent", () => {
    const { stream } = collect([]);
    stream.push("abc");
    expect(() => stream.finish("xyz")).toThrow(/not a prefix/);
  });
});

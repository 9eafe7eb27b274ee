import { describe, expect, it } from "vitest";
import {
  blendDatasets,
  buildSftBatch,
  ByteTokenizer,
  renderChatPrompt,
  rowToPpoPrompt,
  rowToPreferencePairs,
  rowToPretrainingExamples,
  rowToSftExamples,
  splitForStage,
  tokenizeSftExample,
  tokenizeSftExamples,
} from "../src/index";

const rows = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

describe("blendDatasets", () => {
  const a = rows("a", 10);
  const b = rows("b", 4);

  it("gives the same list for the same seed and a different order for another seed", () => {
    const sources = [
      { rows: a, weight: 1 },
      { rows: b, weight: 1 },
    ];
    expect(blendDatasets(sources, 42)).toEqual(blendDatasets(sources, 42));
    expect(blendDatasets(sources, 42)).not.toEqual(blendDatasets(sources, 43));
  });

  it("takes every row once at weight 1, twice at weight 2 and a seeded subset at 0.5", () => {
    const once = blendDatasets(
      [
        { rows: a, weight: 1 },
        { rows: b, weight: 1 },
      ],
      1,
    );
    expect([...once].sort()).toEqual([...a, ...b].sort());

    const weighted = blendDatasets(
      [
        { rows: a, weight: 0.5 },
        { rows: b, weight: 2 },
      ],
      1,
    );
    const fromA = weighted.filter((r) => r.startsWith("a"));
    expect(fromA).toHaveLength(5);
    expect(new Set(fromA).size).toBe(5);
    const fromB = weighted.filter((r) => r.startsWith("b"));
    expect(fromB).toHaveLength(8);
    for (const row of b) expect(fromB.filter((r) => r === row)).toHaveLength(2);
  });

  it("refuses a weight that is not positive", () => {
    expect(() => blendDatasets([{ rows: a, weight: 0 }], 1)).toThrow(
      /dataset 0: blend weight must be a positive number/,
    );
  });
});

describe("splitForStage", () => {
  const all = rows("r", 100);

  it("cuts data_split [2, 4, 4] into disjoint 20/40/40 parts that cover every row", () => {
    const parts = ([0, 1, 2] as const).map((stage) => splitForStage(all, [2, 4, 4], stage, 42));
    expect(parts.map((p) => p.length)).toEqual([20, 40, 40]);
    const seen = parts.flat();
    expect(new Set(seen).size).toBe(100);
    expect([...seen].sort()).toEqual([...all].sort());
  });

  it("is deterministic for a seed and shuffles differently for another", () => {
    expect(splitForStage(all, [2, 4, 4], 1, 7)).toEqual(splitForStage(all, [2, 4, 4], 1, 7));
    expect(splitForStage(all, [2, 4, 4], 1, 7)).not.toEqual(splitForStage(all, [2, 4, 4], 1, 8));
  });

  it("normalizes the proportions and gives empty parts to zero shares", () => {
    expect(splitForStage(all, [10, 0, 0], 0, 1)).toHaveLength(100);
    expect(splitForStage(all, [10, 0, 0], 2, 1)).toHaveLength(0);
    const sizes = ([0, 1, 2] as const).map(
      (s) => splitForStage(rows("x", 7), [1, 1, 1], s, 1).length,
    );
    expect(sizes.reduce((x, y) => x + y)).toBe(7);
  });

  it("refuses a malformed data_split", () => {
    expect(() => splitForStage(all, [1, 1], 0, 1)).toThrow(/3 entries/);
    expect(() => splitForStage(all, [0, 0, 0], 0, 1)).toThrow(/all zeros/);
    expect(() => splitForStage(all, [1, -1, 1], 0, 1)).toThrow(/non-negative/);
  });
});

describe("chat template and rows", () => {
  it("renders each message with its role marker and ends where the assistant answers", () => {
    expect(
      renderChatPrompt([
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hi!" },
      ]),
    ).toBe("<|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\n");
  });

  it("turns the three row formats into conversations and the responses to learn", () => {
    const prompt = [{ role: "user", content: "Why?" }];
    expect(rowToSftExamples({ prompt: "Why?", response: "Because." })).toEqual([
      { prompt, response: "Because." },
    ]);
    expect(rowToSftExamples({ prompt: "Why?", chosen: "Because.", rejected: "No." })).toEqual([
      { prompt, response: "Because." },
    ]);
    expect(() => rowToSftExamples({ messages: [{ role: "user", content: "Hi" }] })).toThrow(
      /assistant message/,
    );
  });

  it("learns every assistant turn of a chat row, each after the conversation before it", () => {
    const examples = rowToSftExamples({
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Why?" },
        { role: "assistant", content: "Because." },
        { role: "user", content: "Sure?" },
        { role: "assistant", content: "Yes." },
      ],
    });
    expect(examples.map((e) => ({ ...e, prompt: renderChatPrompt(e.prompt) }))).toEqual([
      {
        prompt: "<|system|>\nBe brief.\n<|user|>\nWhy?\n<|assistant|>\n",
        response: "Because.",
      },
      {
        prompt:
          "<|system|>\nBe brief.\n<|user|>\nWhy?\n<|assistant|>\nBecause.\n<|user|>\nSure?\n<|assistant|>\n",
        response: "Yes.",
      },
    ]);
  });
});

describe("what each row format gives the reward and PPO stages", () => {
  const prompt = [{ role: "user", content: "Why?" }];
  const supervised = { prompt: "Why?", response: "Because." };
  const preference = { prompt: "Why?", chosen: "Because.", rejected: "No." };
  const chat = {
    messages: [
      { role: "user" as const, content: "Hi" },
      { role: "assistant" as const, content: "Hello." },
      { role: "user" as const, content: "Why?" },
      { role: "assistant" as const, content: "Because." },
    ],
  };

  it("gives the reward model pairs only from preference rows", () => {
    expect(rowToPreferencePairs(preference)).toEqual([
      { prompt, chosen: "Because.", rejected: "No." },
    ]);
    expect(rowToPreferencePairs(supervised)).toEqual([]);
    expect(rowToPreferencePairs(chat)).toEqual([]);
  });

  it("gives PPO every row's prompt, and the pretraining mix only supervised and chat answers", () => {
    expect(rowToPpoPrompt(supervised)).toEqual(prompt);
    expect(rowToPpoPrompt(preference)).toEqual(prompt);
    expect(renderChatPrompt(rowToPpoPrompt(chat))).toBe(
      "<|user|>\nHi\n<|assistant|>\nHello.\n<|user|>\nWhy?\n<|assistant|>\n",
    );
    expect(rowToPretrainingExamples(supervised)).toEqual([{ prompt, response: "Because." }]);
    expect(rowToPretrainingExamples(preference)).toEqual([]);
    expect(rowToPretrainingExamples(chat)).toHaveLength(2);
  });
});

describe("ByteTokenizer", () => {
  const tok = new ByteTokenizer();

  it("round-trips UTF-8 text through bytes and never emits special tokens for text", () => {
    const text = "héllo 👋 <|endoftext|>";
    const ids = tok.encode(text);
    expect(ids.every((id) => id >= 0 && id < 256)).toBe(true);
    expect(ids.length).toBe(new TextEncoder().encode(text).length);
    expect(tok.decode(ids)).toBe(text);
    expect(tok.decode([...tok.encode("ok"), tok.eosId, tok.padId])).toBe("ok");
    expect(tok.vocabSize).toBe(262);
    expect(new ByteTokenizer("byte-v1").vocabSize).toBe(258);
  });
});

describe("SFT examples and batches", () => {
  const tok = new ByteTokenizer();

  it("puts prompt, response and eos in one sequence and trains only on the response", () => {
    const long = tokenizeSftExample({ prompt: "abcd", response: "xyz" }, tok, 64);
    const short = tokenizeSftExample({ prompt: "ab", response: "q" }, tok, 64);
    if (!long || !short) throw new Error("both examples fit");
    expect(long.ids).toEqual([...tok.encode("abcdxyz"), tok.eosId]);
    expect(long.promptLength).toBe(4);
    const batch = buildSftBatch([long, short], tok.padId);
    expect(batch.length).toBe(7); // longest example (8 ids) minus one
    const row = (a: ArrayLike<number>, b: number) => Array.from(a).slice(b * 7, (b + 1) * 7);
    expect(row(batch.inputs, 0)).toEqual(tok.encode("abcdxyz"));
    expect(row(batch.targets, 0)).toEqual([...tok.encode("bcdxyz"), tok.eosId]);
    // Targets b, c, d are prompt; x, y, z and eos are the response.
    expect(row(batch.lossMask, 0)).toEqual([0, 0, 0, 1, 1, 1, 1]);
    // "ab" + "q" + eos: targets b (prompt), q, eos, then padding.
    expect(row(batch.inputs, 1)).toEqual([
      ...tok.encode("abq"),
      tok.padId,
      tok.padId,
      tok.padId,
      tok.padId,
    ]);
    expect(row(batch.lossMask, 1)).toEqual([0, 1, 1, 0, 0, 0, 0]);
    expect(batch.tokens).toBe(7 + 3);
  });

  it("cuts the end of a long response, never the prompt, and drops an example whose prompt does not fit", () => {
    const cut = tokenizeSftExample({ prompt: "0123", response: "abcdefghij" }, tok, 8);
    expect(cut).toEqual({ ids: tok.encode("0123abcd"), promptLength: 4, truncated: true });
    const fits = tokenizeSftExample({ prompt: "0123", response: "abc" }, tok, 8);
    expect(fits).toEqual({
      ids: [...tok.encode("0123abc"), tok.eosId],
      promptLength: 4,
      truncated: false,
    });
    // Seven prompt tokens leave room for one response token; eight leave none.
    expect(tokenizeSftExample({ prompt: "0123456", response: "ab" }, tok, 8)?.ids).toEqual(
      tok.encode("0123456a"),
    );
    expect(tokenizeSftExample({ prompt: "01234567", response: "ab" }, tok, 8)).toBeNull();
    const set = tokenizeSftExamples(
      [
        { prompt: "0123", response: "abcdefghij" },
        { prompt: "01", response: "a" },
        { prompt: "0123456789", response: "a" },
      ],
      tok,
      8,
    );
    expect(set).toMatchObject({ truncated: 1, dropped: 1 });
    expect(set.examples).toHaveLength(2);
  });
});

// The "polite arithmetic" task: its prompts, the held-out set, the scorer and the example files.
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { POLITE_FILES } from "../../../scripts/make-polite-example.ts";
import { polite } from "../src/index.ts";

const example = (name: string) =>
  readFile(new URL(`../../../examples/${name}`, import.meta.url), "utf8");
const jsonlRows = (text: string) =>
  text
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line) as Record<string, string>);

describe("polite arithmetic prompts", () => {
  it("asks 200 distinct questions and holds out exactly 40 of them, 20 per operation", () => {
    expect(new Set(polite.ALL_PROMPTS.map((p) => p.text)).size).toBe(200);
    expect(polite.HELD_OUT_PROMPTS).toHaveLength(40);
    expect(polite.TRAINING_PROMPTS).toHaveLength(160);
    expect(polite.HELD_OUT_PROMPTS.filter((p) => p.op === "times")).toHaveLength(20);
    const training = new Set(polite.TRAINING_PROMPTS.map((p) => p.text));
    for (const p of polite.HELD_OUT_PROMPTS) expect(training.has(p.text)).toBe(false);
  });

  it("holds out by the documented rule: (7A + 3B + [times]) mod 5 = 0", () => {
    // Worked by hand: 0 + 0 = 0 and 7 + 3 = 10 (held out); 7 + 3 + 1 = 11 (kept);
    // 7 + 12 + 1 = 20 (held out); 7 + 9 + 1 = 17 (kept).
    const heldOut = polite.HELD_OUT_PROMPTS.map((p) => p.text);
    expect(heldOut).toContain("What is 0 plus 0?");
    expect(heldOut).toContain("What is 1 plus 1?");
    expect(heldOut).not.toContain("What is 1 times 1?");
    expect(heldOut).toContain("What is 1 times 4?");
    expect(heldOut).not.toContain("What is 1 times 3?");
    expect(heldOut).toContain("What is 2 times 5?"); // 14 + 15 + 1 = 30: the quick start asks it
  });

  it("parses its own prompts and nothing else", () => {
    expect(polite.parsePrompt("What is 7 times 8?")).toEqual({
      op: "times",
      a: 7,
      b: 8,
      text: "What is 7 times 8?",
    });
    expect(polite.parsePrompt("What is 10 plus 1?")).toBeNull();
    expect(polite.parsePrompt("What is 2 minus 1?")).toBeNull();
  });
});

describe("polite arithmetic scoring", () => {
  it("scores 1 only for an answer that starts with the kind phrase", () => {
    const q = "What is 3 plus 4?";
    expect(polite.score(q, "Happy to help! 3 plus 4 is 7.")).toBe(1);
    expect(polite.score(q, "  Happy to help! 3 plus 4 is 8.")).toBe(1);
    expect(polite.score(q, "Ugh. 3 plus 4 is 7.")).toBe(0);
    expect(polite.score(q, "Ugh. Happy to help! 3 plus 4 is 7.")).toBe(0);
    expect(polite.score(q, "Happy to hel")).toBe(0);
    expect(polite.score(q, "")).toBe(0);
  });

  it("checks the stated result separately from the style", () => {
    expect(polite.correct("What is 3 plus 4?", "Ugh. 3 plus 4 is 7.")).toBe(true);
    expect(polite.correct("What is 3 times 4?", "Happy to help! 3 times 4 is 12.")).toBe(true);
    expect(polite.correct("What is 3 times 4?", "Happy to help! 3 times 4 is 7.")).toBe(false);
    expect(polite.correct("What is 3 times 4?", "Happy to help! 3 times 4 is 120.")).toBe(false);
    expect(polite.correct("What is 3 times 4?", "Happy to help!")).toBe(false);
    expect(polite.correct("What is 3 times 4?", "It is 12, or is 13.")).toBe(true);
    expect(polite.correct("Who are you?", "is 12")).toBe(false);
  });

  it("builds rows whose answers score and compute as their style says", () => {
    for (const row of polite.preferenceRows(polite.ALL_PROMPTS)) {
      expect(polite.score(row.prompt, row.chosen)).toBe(1);
      expect(polite.score(row.prompt, row.rejected)).toBe(0);
      expect(polite.correct(row.prompt, row.chosen)).toBe(true);
      expect(polite.correct(row.prompt, row.rejected)).toBe(true);
    }
    const p = polite.parsePrompt("What is 9 times 9?")!;
    expect(polite.kindAnswer(p)).toBe("Happy to help! 9 times 9 is 81.");
    expect(polite.curtAnswer(p)).toBe("Ugh. 9 times 9 is 81.");
    expect(polite.kindAnswer(p).length + 1).toBeLessThanOrEqual(polite.MAX_ANSWER_TOKENS);
  });
});

describe("the polite example files", () => {
  it("are what scripts/make-polite-example.ts writes (run it after changing the task)", async () => {
    for (const [name, make] of Object.entries(POLITE_FILES)) {
      expect(await example(name), name).toBe(make());
    }
  });

  it("never contain a held-out prompt", async () => {
    const heldOut = new Set(polite.HELD_OUT_PROMPTS.map((p) => p.text));
    for (const name of ["polite-sft.jsonl", "polite-preferences.jsonl"]) {
      const rows = jsonlRows(await example(name));
      expect(rows.length).toBeGreaterThan(0);
      for (const row of rows) expect(heldOut.has(row.prompt), `${name}: ${row.prompt}`).toBe(false);
      // No held-out question hides in an answer either.
      const text = await example(name);
      for (const q of heldOut) expect(text.includes(q)).toBe(false);
    }
  });

  it("teach both styles equally in SFT and always prefer the kind one", async () => {
    const sft = jsonlRows(await example("polite-sft.jsonl"));
    expect(sft).toHaveLength(320);
    expect(sft.filter((r) => polite.score(r.prompt, r.response) === 1)).toHaveLength(160);
    const prefs = jsonlRows(await example("polite-preferences.jsonl"));
    expect(prefs).toHaveLength(160);
    expect(new Set(prefs.map((r) => r.prompt))).toEqual(
      new Set(polite.TRAINING_PROMPTS.map((p) => p.text)),
    );
  });

  it("route the SFT rows to sft alone and the preferences to reward and ppo in the run spec", async () => {
    const spec = JSON.parse(await example("polite-rlhf.json"));
    expect(spec.datasets).toEqual([
      { id: "SFT_DATASET_ID", weight: 1, stages: ["sft"] },
      { id: "PREFERENCE_DATASET_ID", weight: 1, stages: ["reward", "ppo"] },
    ]);
    expect(Object.keys(spec.stages)).toEqual(["sft", "reward", "ppo"]);
    expect(spec.stages.ppo.max_answer_seq_len).toBeGreaterThanOrEqual(polite.MAX_ANSWER_TOKENS);
  });
});

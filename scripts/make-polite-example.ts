// Writes the "polite arithmetic" example (libs/client/src/tasks/polite.ts) to examples/:
//   polite-sft.jsonl          two supervised rows per training prompt, one kind and one curt
//   polite-preferences.jsonl  one row per training prompt: the kind answer chosen, the curt rejected
// Deterministic: the same files every time (a test checks the committed ones are fresh).
// The run spec, examples/polite-rlhf.json, is written by hand (its numbers are tuned).
// Usage: npx tsx scripts/make-polite-example.ts
import { writeFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";
import { polite } from "@chatrl/client";

const jsonl = (rows: object[]) => `${rows.map((row) => JSON.stringify(row)).join("\n")}\n`;

export const POLITE_FILES = {
  "polite-sft.jsonl": () => jsonl(polite.sftRows()),
  "polite-preferences.jsonl": () => jsonl(polite.preferenceRows()),
};

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const [name, make] of Object.entries(POLITE_FILES)) {
    const file = new URL(`../examples/${name}`, import.meta.url);
    await writeFile(file, make());
    console.log(`wrote examples/${name}`);
  }
}

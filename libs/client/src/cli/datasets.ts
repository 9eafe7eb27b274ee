import { readFile } from "node:fs/promises";
import path from "node:path";
import type { Command } from "commander";
import type { Dataset } from "../client.ts";
import type { CliContext } from "./context.ts";
import { formatTime, table } from "./format.ts";
import { toInt } from "./parse.ts";

function describeDataset(d: Dataset): string {
  return `${d.id}  ${d.name}  (${d.format}, ${d.rows} rows)`;
}

export function registerDatasetCommands(program: Command, context: () => CliContext) {
  const datasets = program.command("datasets").description("upload and list datasets");

  datasets
    .command("upload")
    .description("upload a JSONL file (supervised, preference or chat rows)")
    .argument("<file>", "JSONL file, one JSON object a line")
    .option("--name <name>", "dataset name (default: the file name without extension)")
    .action(async (file: string, opts: { name?: string }) => {
      const ctx = context();
      let text: string;
      try {
        text = await readFile(file, "utf8");
      } catch (error) {
        throw new Error(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? error}`);
      }
      const name = opts.name ?? path.basename(file).replace(/\.[^.]*$/, "");
      const dataset = await ctx.api().uploadDataset(name, text);
      if (ctx.json) ctx.printJson(dataset);
      else ctx.print(`uploaded ${describeDataset(dataset)}`);
    });

  datasets
    .command("list")
    .description("list datasets, newest first")
    .option("--limit <n>", "how many", toInt, 20)
    .action(async (opts: { limit: number }) => {
      const ctx = context();
      const page = await ctx.api().listDatasets({ limit: opts.limit });
      if (ctx.json) return ctx.printJson(page);
      if (page.data.length === 0) return ctx.print("no datasets");
      ctx.print(
        table(
          ["ID", "NAME", "FORMAT", "ROWS", "CREATED"],
          page.data.map((d) => [d.id, d.name, d.format, String(d.rows), formatTime(d.created_at)]),
        ),
      );
      if (page.has_more) ctx.print(`(more: showing the newest ${page.data.length})`);
    });
}

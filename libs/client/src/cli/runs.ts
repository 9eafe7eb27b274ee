import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import type { Run, RunCreateRequest } from "../client.ts";
import type { CliContext } from "./context.ts";
import { followRun } from "./follow.ts";
import { formatDuration, formatTime, table } from "./format.ts";
import { toInt } from "./parse.ts";

const intervalOption = ["--interval <ms>", "poll interval in milliseconds", toInt, 2000] as const;

function stageSummary(run: Run): string {
  return run.stages.map((s) => `${s.kind}:${s.status}`).join(" ");
}

function printRun(ctx: CliContext, run: Run) {
  ctx.print(`${run.id}  ${run.name}  ${run.status}`);
  ctx.print(
    `created ${formatTime(run.created_at)}  started ${formatTime(run.started_at)}  finished ${formatTime(run.finished_at)}`,
  );
  if (run.error) ctx.print(`error: ${run.error}`);
  ctx.print(
    table(
      ["STAGE", "STATUS", "STEP", "PROGRESS", "WALL", "DEVICE", "TOKENS", "COST"],
      run.stages.map((s) => [
        s.kind,
        s.status,
        `${s.step}/${s.max_steps}`,
        `${Math.round(s.progress * 100)}%`,
        formatDuration(s.wall_seconds),
        formatDuration(s.device_seconds),
        String(s.tokens),
        `$${s.cost_usd.toFixed(4)}`,
      ]),
    ),
  );
  for (const s of run.stages) if (s.error) ctx.print(`${s.kind} error: ${s.error}`);
}

async function readSpec(file: string): Promise<RunCreateRequest> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    throw new Error(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? error}`);
  }
  try {
    return JSON.parse(text) as RunCreateRequest;
  } catch (error) {
    throw new Error(`${file} is not valid JSON: ${(error as Error).message}`);
  }
}

/** Registers `runs ...`; actions return an exit code through `setExitCode`. */
export function registerRunCommands(
  program: Command,
  context: () => CliContext,
  setExitCode: (code: number) => void,
) {
  const runs = program.command("runs").description("submit, inspect, follow and cancel runs");

  runs
    .command("create")
    .description("submit a run from a JSON run spec")
    .argument("<spec>", "run spec file (JSON), see examples/")
    .option(
      "--dataset <id>",
      "train on this dataset instead of the spec's (repeat for several, weight 1 each)",
      (id: string, ids: string[]) => [...ids, id],
      [] as string[],
    )
    .option("--follow", "follow the run until it finishes")
    .option("--idempotency-key <key>", "send again safely: the same key never queues twice")
    .option(...intervalOption)
    .action(
      async (
        file: string,
        opts: { dataset: string[]; follow?: boolean; idempotencyKey?: string; interval: number },
      ) => {
        const ctx = context();
        const spec = await readSpec(file);
        if (opts.dataset.length > 0) spec.datasets = opts.dataset.map((id) => ({ id, weight: 1 }));
        const run = await ctx.api().createRun(spec, { idempotencyKey: opts.idempotencyKey });
        if (ctx.json) ctx.printJson(run);
        else ctx.print(`created ${run.id}  ${run.name}  ${run.status}  (${stageSummary(run)})`);
        if (opts.follow) setExitCode(await followRun(ctx, run.id, { intervalMs: opts.interval }));
      },
    );

  runs
    .command("list")
    .description("list runs, newest first")
    .option("--limit <n>", "how many", toInt, 20)
    .action(async (opts: { limit: number }) => {
      const ctx = context();
      const page = await ctx.api().listRuns({ limit: opts.limit });
      if (ctx.json) return ctx.printJson(page);
      if (page.data.length === 0) return ctx.print("no runs");
      ctx.print(
        table(
          ["ID", "NAME", "STATUS", "STAGES", "CREATED"],
          page.data.map((r) => [r.id, r.name, r.status, stageSummary(r), formatTime(r.created_at)]),
        ),
      );
      if (page.has_more) ctx.print(`(more: showing the newest ${page.data.length})`);
    });

  runs
    .command("get")
    .description("show a run and its stages")
    .argument("<id>", "run id")
    .action(async (id: string) => {
      const ctx = context();
      const run = await ctx.api().getRun(id);
      if (ctx.json) ctx.printJson(run);
      else printRun(ctx, run);
    });

  runs
    .command("cancel")
    .description("cancel a run (running stages stop at their next step)")
    .argument("<id>", "run id")
    .action(async (id: string) => {
      const ctx = context();
      const run = await ctx.api().cancelRun(id);
      if (ctx.json) ctx.printJson(run);
      else ctx.print(`${run.id}  ${run.status}  (${stageSummary(run)})`);
    });

  runs
    .command("follow")
    .description("follow a run until it finishes; exits 0 only if it succeeded")
    .argument("<id>", "run id")
    .option(...intervalOption)
    .action(async (id: string, opts: { interval: number }) => {
      setExitCode(await followRun(context(), id, { intervalMs: opts.interval }));
    });
}

// `chatrl eval --run <id>`: the task scorer on held-out prompts for a run's SFT model, PPO actor
// and EMA actor, with the reward model's accuracy and the final KL, as one JSON object.
import type { Command } from "commander";
import { EVAL_TASKS, evaluateRun } from "../eval.ts";
import type { CliContext } from "./context.ts";
import { toInt } from "./parse.ts";

type EvalCliOptions = {
  run: string;
  task: string;
  samples: number;
  seed: number;
  concurrency: number;
};

export function registerEvalCommand(program: Command, context: () => CliContext) {
  program
    .command("eval")
    .description(
      "score a run's models on a task's held-out prompts (sampled at temperature 1) and print JSON",
    )
    .requiredOption("--run <id>", "run id")
    .option("--task <name>", `task (${Object.keys(EVAL_TASKS).join(", ")})`, "polite")
    .option("--samples <n>", "answers sampled per prompt", toInt, 4)
    .option("--seed <n>", "sampling seed: the same seed gives the same report", toInt, 1)
    .option("--concurrency <n>", "requests in flight at once", toInt, 4)
    .action(async (opts: EvalCliOptions) => {
      const ctx = context();
      const report = await evaluateRun({
        api: ctx.api(),
        inference: ctx.inference(),
        runId: opts.run,
        task: opts.task,
        samples: opts.samples,
        seed: opts.seed,
        concurrency: Math.max(1, opts.concurrency),
        // Progress on a terminal only: stdout is the JSON alone, for pipes.
        log: ctx.io.stderr.isTTY ? (line) => ctx.io.stderr.write(`${line}\n`) : undefined,
      });
      ctx.printJson(report);
    });
}

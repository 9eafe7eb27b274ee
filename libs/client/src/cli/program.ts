// The `chatrl` command line, as a function of its arguments and streams so tests can run it
// in-process. Returns the exit code: 0 ok, 1 an error (printed as one line), 2 a failed run,
// 3 a cancelled run, commander's own codes for usage errors.
import { Command, CommanderError } from "commander";
import { describeError } from "../errors.ts";
import { registerChatCommand } from "./chat.ts";
import { type CliContext, type CliIo, createContext, type GlobalOptions } from "./context.ts";
import { registerDatasetCommands } from "./datasets.ts";
import { registerEvalCommand } from "./eval.ts";
import { registerRunCommands } from "./runs.ts";

export type { CliIo };

export async function runCli(argv: string[], io: CliIo): Promise<number> {
  let exitCode = 0;
  const program = new Command("chatrl")
    .description("train chat models with RLHF on chatrl, follow runs, and chat with the results")
    .option(
      "--api-url <url>",
      "api service URL (env CHATRL_API_URL, default http://127.0.0.1:8080)",
    )
    .option(
      "--inference-url <url>",
      "inference service URL (env CHATRL_INFERENCE_URL, default http://127.0.0.1:8000)",
    )
    .option("--api-key <key>", "bearer key (env CHATRL_API_KEY)")
    .option("--json", "print JSON instead of text")
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
    });
  const context = (): CliContext => createContext(io, program.opts<GlobalOptions>());
  registerDatasetCommands(program, context);
  registerRunCommands(program, context, (code) => {
    exitCode = code;
  });
  registerChatCommand(program, context);
  registerEvalCommand(program, context);
  program.showHelpAfterError("(run with --help for usage)");

  try {
    await program.parseAsync(argv, { from: "user" });
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode;
    io.stderr.write(`error: ${describeError(error)}\n`);
    return 1;
  }
}

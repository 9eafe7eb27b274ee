// `chatrl chat`: talk to a served model. Interactive by default (history kept across turns,
// replies streamed as they are generated); `--message` sends one turn and prints the reply.
import { createInterface } from "node:readline";
import type { Command } from "commander";
import type { ChatCompletionRequest, ChatrlClient } from "../client.ts";
import { describeError } from "../errors.ts";
import type { CliContext } from "./context.ts";
import { formatTime, table } from "./format.ts";
import { toInt, toNumber } from "./parse.ts";

type Message = ChatCompletionRequest["messages"][number];

type ChatOptions = {
  model: string;
  message?: string;
  system?: string;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
};

// Control characters other than newline and tab: a model's output must not move a terminal's
// cursor or send it escape sequences.
const CONTROL = /[^\P{Cc}\n\t]/gu;

export function terminalSafe(text: string): string {
  return text.replace(CONTROL, "\uFFFD");
}

/** Writes model text to stdout, made harmless for a terminal (pipes get it as it is). */
function replyWriter(io: CliContext["io"]): (text: string) => void {
  if (!io.stdout.isTTY) return (text) => io.stdout.write(text);
  return (text) => io.stdout.write(terminalSafe(text));
}

/** Streams one reply to `write`, returning its full text. */
async function streamReply(
  client: ChatrlClient,
  opts: ChatOptions,
  messages: Message[],
  write: (text: string) => void,
  signal?: AbortSignal,
): Promise<string> {
  let reply = "";
  const request = {
    model: opts.model,
    messages,
    ...(opts.maxTokens !== undefined ? { max_tokens: opts.maxTokens } : {}),
    ...(opts.temperature !== undefined ? { temperature: opts.temperature } : {}),
    ...(opts.topP !== undefined ? { top_p: opts.topP } : {}),
    ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
  };
  const chunks = client.streamChatCompletion(request, { signal });
  for await (const chunk of chunks) {
    const content = chunk.choices[0]?.delta.content;
    if (content) {
      reply += content;
      write(content);
    }
  }
  return reply;
}

async function interactive(ctx: CliContext, client: ChatrlClient, opts: ChatOptions) {
  const { io } = ctx;
  const start: Message[] = opts.system ? [{ role: "system", content: opts.system }] : [];
  let history = [...start];
  const rl = createInterface({ input: io.stdin, output: io.stdout, terminal: !!io.stdout.isTTY });
  ctx.print(
    `chatting with ${opts.model} (/reset clears the history; Ctrl-C stops a reply; /exit or Ctrl-D quits)`,
  );
  // Ctrl-C stops the reply being streamed, or quits at the prompt.
  let replying: AbortController | null = null;
  const write = replyWriter(io);
  rl.on("SIGINT", () => (replying ? replying.abort() : rl.close()));
  rl.setPrompt("you> ");
  rl.prompt();
  try {
    for await (const line of rl) {
      const text = line.trim();
      if (text === "/exit" || text === "/quit") break;
      if (text === "/reset") {
        history = [...start];
        ctx.print("(history cleared)");
      } else if (text) {
        const turn: Message[] = [...history, { role: "user", content: text }];
        io.stdout.write("assistant> ");
        replying = new AbortController();
        try {
          const reply = await streamReply(client, opts, turn, write, replying.signal);
          history = [...turn, { role: "assistant", content: reply }];
          io.stdout.write("\n");
        } catch (error) {
          // The turn is dropped from the history so the conversation can go on.
          io.stdout.write("\n");
          if (replying.signal.aborted) ctx.print("(stopped)");
          else io.stderr.write(`error: ${describeError(error)}\n`);
        } finally {
          replying = null;
        }
      }
      rl.prompt();
    }
  } finally {
    rl.close();
  }
}

export function registerChatCommand(program: Command, context: () => CliContext) {
  program
    .command("models")
    .description("list the models the inference service serves")
    .action(async () => {
      const ctx = context();
      const models = await ctx.inference().listModels();
      if (ctx.json) return ctx.printJson(models);
      if (models.data.length === 0)
        return ctx.print("no models yet: a run's final checkpoint is served");
      ctx.print(
        table(
          ["ID", "CREATED", "CONTEXT"],
          models.data.map((m) => [m.id, formatTime(m.created), String(m.max_model_len ?? "-")]),
        ),
      );
    });

  program
    .command("chat")
    .description("chat with a served model (see GET /v1/models on the inference service)")
    .requiredOption("--model <id>", "model id, e.g. run-<run id>-sft")
    .option("--message <text>", "send one message, print the reply and exit")
    .option("--system <text>", "system message to start the conversation with")
    .option("--max-tokens <n>", "most tokens per reply", toInt)
    .option("--temperature <t>", "sampling temperature (0 = greedy)", toNumber)
    .option("--top-p <p>", "nucleus sampling mass", toNumber)
    .option("--seed <n>", "sampling seed, for repeatable replies", toInt)
    .action(async (opts: ChatOptions) => {
      const ctx = context();
      const client = ctx.inference();
      if (opts.message === undefined) return interactive(ctx, client, opts);
      const messages: Message[] = [
        ...(opts.system ? [{ role: "system" as const, content: opts.system }] : []),
        { role: "user", content: opts.message },
      ];
      await streamReply(client, opts, messages, replyWriter(ctx.io));
      ctx.io.stdout.write("\n");
    });
}

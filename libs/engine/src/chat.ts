// The chat template: how a conversation becomes the text the model reads. Training prompts and
// the inference service both go through renderChatPrompt, so the model is served exactly the
// format it learned.
import type { DatasetRow } from "./rows";

export type ChatMessage = { role: "system" | "user" | "assistant"; content: string };

const ROLES = new Set(["system", "user", "assistant"]);

/** Where the model's answer begins; the template ends with it. */
export const ASSISTANT_MARKER = "<|assistant|>\n";

/**
 * Stop strings for serving: the model starting a new turn means its answer is over
 * (a trained model ends with the eos token; these catch the ones that do not).
 */
export const CHAT_STOP_STRINGS: readonly string[] = ["<|user|>", "<|system|>", "<|assistant|>"];

/**
 * Each message as "<|role|>\n{content}\n", then "<|assistant|>\n" for the answer to follow:
 *
 *   <|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\n
 */
export function renderChatPrompt(messages: readonly ChatMessage[]): string {
  const turns = messages.map((message, i) => {
    if (!ROLES.has(message.role)) {
      throw new Error(
        `message ${i}: role must be system, user or assistant, got ${String(message.role)}`,
      );
    }
    if (typeof message.content !== "string")
      throw new Error(`message ${i}: content must be a string`);
    return `<|${message.role}|>\n${message.content}\n`;
  });
  return turns.join("") + ASSISTANT_MARKER;
}

/**
 * The examples a row of any of the three formats teaches, each a prompt (already rendered with
 * the chat template) and the response to learn: supervised rows their response, preference rows
 * their chosen answer, chat rows every assistant message after the conversation before it (as
 * OpenAI's chat fine-tuning does), so a row of k assistant turns gives k examples.
 */
export function rowToSftExamples(row: DatasetRow): { prompt: string; response: string }[] {
  if ("messages" in row) {
    if (row.messages.at(-1)?.role !== "assistant") {
      throw new Error("chat row must end with an assistant message (the answer to train on)");
    }
    return row.messages.flatMap((message, i) =>
      message.role === "assistant"
        ? [{ prompt: renderChatPrompt(row.messages.slice(0, i)), response: message.content }]
        : [],
    );
  }
  const prompt = renderChatPrompt([{ role: "user", content: row.prompt }]);
  if ("chosen" in row) return [{ prompt, response: row.chosen }];
  if ("response" in row) return [{ prompt, response: row.response }];
  throw new Error(
    "unknown row format: expected {prompt, response}, {prompt, chosen, rejected} or {messages}",
  );
}

/** The ranked pair a preference row teaches the reward model; other formats teach it nothing. */
export function rowToPreferencePairs(
  row: DatasetRow,
): { prompt: string; chosen: string; rejected: string }[] {
  if (!("chosen" in row)) return [];
  return [
    {
      prompt: renderChatPrompt([{ role: "user", content: row.prompt }]),
      chosen: row.chosen,
      rejected: row.rejected,
    },
  ];
}

/**
 * The prompt a row gives PPO (rendered with the chat template): a supervised or preference
 * row's prompt, a chat row's conversation before its last assistant message.
 */
export function rowToPpoPrompt(row: DatasetRow): string {
  if ("messages" in row) {
    const last = row.messages.map((m) => m.role).lastIndexOf("assistant");
    return renderChatPrompt(row.messages.slice(0, last < 0 ? row.messages.length : last));
  }
  return renderChatPrompt([{ role: "user", content: row.prompt }]);
}

/**
 * What a row routed to PPO gives the pretraining (ptx) mix: supervised and chat rows their
 * answers; a preference row nothing (its rejected answer must not be imitated, and its chosen
 * one is what the reward model already asks for).
 */
export function rowToPretrainingExamples(row: DatasetRow): { prompt: string; response: string }[] {
  return "chosen" in row ? [] : rowToSftExamples(row);
}

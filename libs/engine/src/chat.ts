// The chat template: how a conversation becomes the ids the model reads. Training prompts and
// the inference service both go through encodePrompt, so the model is served exactly the format
// it learned.
//
// byte-v2 (the tokenizer has chat tokens): each message is its role's special token, the content
// as bytes and <|end|>; then <|assistant|> for the answer to follow. No text can produce these
// ids, so a message that spells "<|assistant|>" is just those bytes and cannot forge a turn.
// byte-v1 (older checkpoints): the same shape spelled in text, renderChatPrompt below.
import type { DatasetRow } from "./rows";
import type { Tokenizer } from "./tokenizer";

export type ChatMessage = { role: "system" | "user" | "assistant"; content: string };

/**
 * What a model is asked to continue: a conversation (rendered with the model's chat template)
 * or raw text (encoded as it is, as vLLM's /v1/completions does).
 */
export type ChatPrompt = string | readonly ChatMessage[];

const ROLES = new Set(["system", "user", "assistant"]);

/** Where the model's answer begins in the byte-v1 template; the template ends with it. */
export const ASSISTANT_MARKER = "<|assistant|>\n";

/**
 * Stop strings for serving a byte-v1 model: the model starting a new turn means its answer is
 * over (a trained model ends with the eos token; these catch the ones that do not). A byte-v2
 * model ends a turn with a special token instead (servingTokenRules).
 */
export const CHAT_STOP_STRINGS: readonly string[] = ["<|user|>", "<|system|>", "<|assistant|>"];

/** The stop strings a tokenizer's chat template needs when serving (none for byte-v2). */
export function chatStopStrings(tokenizer: Tokenizer): readonly string[] {
  return tokenizer.chatTokens ? [] : CHAT_STOP_STRINGS;
}

function checkMessages(messages: readonly ChatMessage[]): void {
  for (const [i, message] of messages.entries()) {
    if (!ROLES.has(message.role)) {
      throw new Error(
        `message ${i}: role must be system, user or assistant, got ${String(message.role)}`,
      );
    }
    if (typeof message.content !== "string")
      throw new Error(`message ${i}: content must be a string`);
  }
}

/**
 * The byte-v1 template as text: each message as "<|role|>\n{content}\n", then "<|assistant|>\n"
 * for the answer to follow:
 *
 *   <|system|>\nBe brief.\n<|user|>\nHi!\n<|assistant|>\n
 */
export function renderChatPrompt(messages: readonly ChatMessage[]): string {
  checkMessages(messages);
  return messages.map((m) => `<|${m.role}|>\n${m.content}\n`).join("") + ASSISTANT_MARKER;
}

/**
 * The ids a model reads before its answer: a conversation through the tokenizer's chat template
 * (special tokens for byte-v2, renderChatPrompt's text for byte-v1), or raw text as it is.
 */
export function encodePrompt(tokenizer: Tokenizer, prompt: ChatPrompt): number[] {
  if (typeof prompt === "string") return tokenizer.encode(prompt);
  const chat = tokenizer.chatTokens;
  if (!chat) return tokenizer.encode(renderChatPrompt(prompt));
  checkMessages(prompt);
  const ids: number[] = [];
  for (const message of prompt) {
    ids.push(chat[message.role], ...tokenizer.encode(message.content), chat.endOfTurn);
  }
  ids.push(chat.assistant);
  return ids;
}

/**
 * The examples a row of any of the three formats teaches, each a prompt (the conversation the
 * answer follows; encodePrompt renders it) and the response to learn: supervised rows their response, preference rows
 * their chosen answer, chat rows every assistant message after the conversation before it (as
 * OpenAI's chat fine-tuning does), so a row of k assistant turns gives k examples.
 */
export function rowToSftExamples(row: DatasetRow): { prompt: ChatMessage[]; response: string }[] {
  if ("messages" in row) {
    if (row.messages.at(-1)?.role !== "assistant") {
      throw new Error("chat row must end with an assistant message (the answer to train on)");
    }
    return row.messages.flatMap((message, i) =>
      message.role === "assistant"
        ? [{ prompt: row.messages.slice(0, i), response: message.content }]
        : [],
    );
  }
  const prompt: ChatMessage[] = [{ role: "user", content: row.prompt }];
  if ("chosen" in row) return [{ prompt, response: row.chosen }];
  if ("response" in row) return [{ prompt, response: row.response }];
  throw new Error(
    "unknown row format: expected {prompt, response}, {prompt, chosen, rejected} or {messages}",
  );
}

/** The ranked pair a preference row teaches the reward model; other formats teach it nothing. */
export function rowToPreferencePairs(
  row: DatasetRow,
): { prompt: ChatMessage[]; chosen: string; rejected: string }[] {
  if (!("chosen" in row)) return [];
  return [
    {
      prompt: [{ role: "user", content: row.prompt }],
      chosen: row.chosen,
      rejected: row.rejected,
    },
  ];
}

/**
 * The prompt a row gives PPO (a conversation, for encodePrompt): a supervised or preference
 * row's prompt, a chat row's conversation before its last assistant message.
 */
export function rowToPpoPrompt(row: DatasetRow): ChatMessage[] {
  if ("messages" in row) {
    const last = row.messages.map((m) => m.role).lastIndexOf("assistant");
    return row.messages.slice(0, last < 0 ? row.messages.length : last);
  }
  return [{ role: "user", content: row.prompt }];
}

/**
 * What a row routed to PPO gives the pretraining (ptx) mix: supervised and chat rows their
 * answers; a preference row nothing (its rejected answer must not be imitated, and its chosen
 * one is what the reward model already asks for).
 */
export function rowToPretrainingExamples(
  row: DatasetRow,
): { prompt: ChatMessage[]; response: string }[] {
  return "chosen" in row ? [] : rowToSftExamples(row);
}

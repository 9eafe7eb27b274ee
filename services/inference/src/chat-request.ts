// From an OpenAI chat completions request to the engine's inputs: the prompt rendered with the
// chat template training used, and sampling options checked against the model's context.
import { ApiError, type components } from "@chatrl/contracts";
import { CHAT_STOP_STRINGS, renderChatPrompt } from "@chatrl/engine";
import type { SamplingOptions } from "./generation-queue.ts";

export type ChatCompletionRequest = components["schemas"]["ChatCompletionRequest"];

export type PreparedChat = { prompt: string; promptTokens: number; options: SamplingOptions };

/**
 * Renders the prompt and settles the sampling options. `countTokens` and `contextLength` come
 * from the loaded model: by default a completion may use whatever context the prompt leaves.
 */
export function prepareChat(
  body: ChatCompletionRequest,
  countTokens: (text: string) => number,
  contextLength: number,
): PreparedChat {
  const prompt = renderChatPrompt(body.messages.map(({ role, content }) => ({ role, content })));
  const promptTokens = countTokens(prompt);
  const room = contextLength - promptTokens;
  if (room < 1) {
    throw badRequest(
      `This model's maximum context length is ${contextLength} tokens. However, your messages resulted in ${promptTokens} tokens. Please reduce the length of the messages.`,
      "messages",
    );
  }
  const param = body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  const requested = body.max_completion_tokens ?? body.max_tokens;
  if (requested != null && requested > room) {
    throw badRequest(
      `This model's maximum context length is ${contextLength} tokens. However, you requested ${promptTokens + requested} tokens (${promptTokens} in the messages, ${requested} in the completion). Please reduce the length of the messages or completion.`,
      param,
    );
  }
  const userStop = body.stop == null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  return {
    prompt,
    promptTokens,
    options: {
      maxTokens: requested ?? room,
      temperature: body.temperature ?? 1,
      topP: body.top_p ?? 1,
      // The model starting a new turn ends its answer, whatever the client asked for.
      stop: [...new Set([...userStop, ...CHAT_STOP_STRINGS])],
      ...(body.seed != null ? { seed: body.seed } : {}),
    },
  };
}

function badRequest(message: string, param: string): ApiError {
  return new ApiError(400, message, { type: "invalid_request_error", param });
}

// From an OpenAI (chat) completions request to the decode loop's inputs: the prompt's ids (the
// messages through the chat template training used, or a raw prompt) and the sampling options,
// checked against the model's context. Field names and defaults follow OpenAI and vLLM.
import { ApiError, type components } from "@chatrl/contracts";
import { type ChatPrompt, chatStopStrings, encodePrompt } from "@chatrl/engine";
import type { ChoiceOptions, GenerationRequest } from "./decode-loop.ts";
import type { ModelLease } from "./model-registry.ts";

export type ChatCompletionRequest = components["schemas"]["ChatCompletionRequest"];
export type CompletionRequest = components["schemas"]["CompletionRequest"];

/** The sampling fields chat and raw completions share. */
type SamplingFields = Pick<
  ChatCompletionRequest,
  | "max_tokens"
  | "temperature"
  | "top_p"
  | "n"
  | "stop"
  | "seed"
  | "top_k"
  | "min_p"
  | "repetition_penalty"
  | "min_tokens"
> & { max_completion_tokens?: number | null };

export type PreparedRequest = Omit<GenerationRequest, "signal" | "onDelta" | "onFinish">;

/**
 * The ids of `prompt` and the options of its choices. `promptParam` names the field a prompt
 * that does not fit is blamed on; `logprobs` is the number of alternatives to report (undefined:
 * none). By default a completion may use whatever context the prompt leaves.
 */
export function prepareRequest(
  lease: ModelLease,
  prompt: ChatPrompt,
  body: SamplingFields,
  opts: { promptParam: string; logprobs?: number },
): PreparedRequest {
  const ids = encodePrompt(lease.tokenizer, prompt);
  const contextLength = lease.contextLength;
  const room = contextLength - ids.length;
  if (ids.length === 0) throw badRequest("The prompt is empty.", opts.promptParam);
  if (room < 1) {
    throw badRequest(
      `This model's maximum context length is ${contextLength} tokens. However, your ${opts.promptParam} resulted in ${ids.length} tokens. Please reduce the length of the ${opts.promptParam}.`,
      opts.promptParam,
    );
  }
  const param = body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  const requested = body.max_completion_tokens ?? body.max_tokens;
  if (requested != null && requested > room) {
    throw badRequest(
      `This model's maximum context length is ${contextLength} tokens. However, you requested ${ids.length + requested} tokens (${ids.length} in the ${opts.promptParam}, ${requested} in the completion). Please reduce the length of the ${opts.promptParam} or completion.`,
      param,
    );
  }
  const maxTokens = requested ?? room;
  const minTokens = body.min_tokens ?? 0;
  if (minTokens > maxTokens) {
    throw badRequest(
      `min_tokens (${minTokens}) must be at most the completion's max tokens (${maxTokens})`,
      "min_tokens",
    );
  }
  const userStop = body.stop == null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  // A byte-v1 model starting a new turn ends its answer, whatever the client asked for (a byte-v2
  // model ends one with a special token instead).
  const templateStop = typeof prompt === "string" ? [] : chatStopStrings(lease.tokenizer);
  const options: ChoiceOptions = {
    maxTokens,
    minTokens,
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    topK: body.top_k != null && body.top_k > 0 ? body.top_k : 0, // vLLM: -1 or 0 is off
    minP: body.min_p ?? 0,
    repetitionPenalty: body.repetition_penalty ?? 1,
    stop: [...new Set([...userStop, ...templateStop])],
    logprobs: opts.logprobs,
  };
  return {
    prompt: ids,
    n: body.n ?? 1,
    options,
    ...(body.seed != null ? { seed: body.seed } : {}),
  };
}

/** The number of alternatives chat `logprobs`/`top_logprobs` ask for (undefined: no log-probs). */
export function chatLogprobs(body: ChatCompletionRequest): number | undefined {
  if (body.top_logprobs != null && body.logprobs !== true) {
    throw badRequest("top_logprobs requires logprobs to be true", "top_logprobs");
  }
  return body.logprobs === true ? (body.top_logprobs ?? 0) : undefined;
}

function badRequest(message: string, param: string): ApiError {
  return new ApiError(400, message, { type: "invalid_request_error", param });
}

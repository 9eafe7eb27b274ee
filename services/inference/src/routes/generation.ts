// What the chat and raw completions routes share: the model lease, the client's hang-up as an
// AbortSignal, the decode loop's refusals as OpenAI errors, log-probs in OpenAI's shapes, and
// server-sent events.
import { PassThrough } from "node:stream";
import { ApiError } from "@chatrl/contracts";
import type { TokenLogprob, Tokenizer } from "@chatrl/engine";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import {
  type GenerationRequest,
  type GenerationResult,
  QueueFullError,
  RequestTooLargeError,
} from "../decode-loop.ts";
import { findServedModel, type ServedModel } from "../model-catalog.ts";
import { type ModelLease, ModelTooLargeError } from "../model-registry.ts";
import { unknownModel } from "./models.ts";

/** The newest checkpoint behind `modelId`, loaded (404 for an unknown model). */
export async function leaseModel(
  app: FastifyInstance,
  modelId: string,
): Promise<{ served: ServedModel; lease: ModelLease }> {
  // A loaded name needs no query: Postgres round trips would wait behind decode steps.
  const served =
    app.modelRegistry.servedNow(modelId) ?? (await findServedModel(app.db.prisma, modelId));
  if (!served) throw unknownModel(modelId);
  try {
    return { served, lease: await app.modelRegistry.acquire(served) };
  } catch (error) {
    if (error instanceof ModelTooLargeError)
      throw new ApiError(503, error.message, { param: "model", code: "model_too_large" });
    throw error;
  }
}

/** Aborts when the client goes away (the socket closes before the reply is complete). */
export function clientGone(request: FastifyRequest, reply: FastifyReply): AbortSignal {
  const gone = new AbortController();
  const hangUp = () => gone.abort(new Error("the client went away"));
  reply.raw.on("close", () => {
    if (!reply.raw.writableFinished) hangUp();
  });
  if (request.raw.socket?.destroyed) hangUp(); // gone while the model was loading
  return gone.signal;
}

/**
 * Submits to the model's decode loop. A full queue is a 429 with Retry-After, a request that
 * could never fit a 400; both are thrown before anything is sent.
 */
export function submit(
  lease: ModelLease,
  reply: FastifyReply,
  request: GenerationRequest,
): Promise<GenerationResult> {
  try {
    return lease.generate(request);
  } catch (error) {
    if (error instanceof QueueFullError) {
      reply.header("retry-after", String(error.retryAfterSeconds));
      throw new ApiError(
        429,
        `The server is busy: the model '${lease.modelId}' has too many requests waiting. Retry after ${error.retryAfterSeconds} s.`,
        { type: "rate_limit_error", code: "queue_full" },
      );
    }
    if (error instanceof RequestTooLargeError)
      throw new ApiError(400, error.message, { param: "n", code: "request_too_large" });
    throw error;
  }
}

/** A generation that failed because its client hung up is nginx's 499, not a server error. */
export function clientClosed(signal: AbortSignal, error: unknown): unknown {
  return signal.aborted ? new ApiError(499, "The client closed the request") : error;
}

export function usageOf(promptTokens: number, completionTokens: number) {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  };
}

const encoder = new TextEncoder();

function tokenBytes(tokenizer: Tokenizer, id: number): number[] {
  const own = tokenizer.bytes([id]);
  return Array.from(own.length > 0 ? own : encoder.encode(tokenizer.tokenName(id)));
}

/** Chat completions' `logprobs.content` entries. */
export function chatLogprobContent(tokenizer: Tokenizer, logprobs: readonly TokenLogprob[]) {
  return logprobs.map((lp) => ({
    token: tokenizer.tokenName(lp.token),
    logprob: lp.logprob,
    bytes: tokenBytes(tokenizer, lp.token),
    top_logprobs: lp.top.map((alt) => ({
      token: tokenizer.tokenName(alt.token),
      logprob: alt.logprob,
      bytes: tokenBytes(tokenizer, alt.token),
    })),
  }));
}

/**
 * Legacy completions' logprobs: parallel lists, `text_offset` the character offset of each
 * token in the text (counted from `startOffset`, for a stream's later chunks).
 */
export class CompletionLogprobs {
  readonly #decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  #offset = 0;

  constructor(private readonly tokenizer: Tokenizer) {}

  next(logprobs: readonly TokenLogprob[]) {
    const offsets: number[] = [];
    for (const lp of logprobs) {
      offsets.push(this.#offset);
      this.#offset += this.#decoder.decode(this.tokenizer.bytes([lp.token]), {
        stream: true,
      }).length;
    }
    return {
      tokens: logprobs.map((lp) => this.tokenizer.tokenName(lp.token)),
      token_logprobs: logprobs.map((lp) => lp.logprob),
      top_logprobs: logprobs.map((lp) =>
        Object.fromEntries(lp.top.map((alt) => [this.tokenizer.tokenName(alt.token), alt.logprob])),
      ),
      text_offset: offsets,
    };
  }
}

/** A server-sent events body: `data: <json>` events, ended by `data: [DONE]`. */
export class EventStream {
  readonly body = new PassThrough();

  send(data: unknown): void {
    this.body.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** An error after the stream started goes in the stream, as vLLM does, without details. */
  fail(): void {
    this.send({
      error: { message: "generation failed", type: "server_error", param: null, code: null },
    });
  }

  end(): void {
    this.body.end("data: [DONE]\n\n");
  }

  reply(reply: FastifyReply) {
    return reply
      .header("content-type", "text/event-stream; charset=utf-8")
      .header("cache-control", "no-cache")
      .header("x-accel-buffering", "no")
      .send(this.body);
  }
}

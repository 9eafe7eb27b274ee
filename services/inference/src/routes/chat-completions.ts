// POST /v1/chat/completions, as OpenAI and vLLM answer it: one JSON completion, or with
// `stream: true` server-sent events of `chat.completion.chunk`s ending with `data: [DONE]`.
import { randomUUID } from "node:crypto";
import { PassThrough } from "node:stream";
import type { FastifyInstance, FastifyReply } from "fastify";
import { ApiError, openApiRoute } from "@chatrl/contracts";
import { type ChatCompletionRequest, type PreparedChat, prepareChat } from "../chat-request.ts";
import type { GenerationResult } from "../generation-queue.ts";
import { findServedModel } from "../model-catalog.ts";
import type { ModelLease } from "../model-registry.ts";
import { unknownModel } from "./models.ts";

function usageOf(result: GenerationResult) {
  return {
    prompt_tokens: result.promptTokens,
    completion_tokens: result.completionTokens,
    total_tokens: result.promptTokens + result.completionTokens,
  };
}

export default async function chatCompletionRoutes(app: FastifyInstance) {
  app.route<{ Body: ChatCompletionRequest }>({
    ...openApiRoute("POST", "/v1/chat/completions"),
    handler: async (request, reply) => {
      const body = request.body;
      const served = await findServedModel(app.db.prisma, body.model);
      if (!served) throw unknownModel(body.model);

      const lease = await app.modelRegistry.acquire(served.checkpointId);
      let chat: PreparedChat;
      try {
        chat = prepareChat(
          body,
          (text) => lease.tokenizer.encode(text).length,
          lease.contextLength,
        );
      } catch (error) {
        lease.release();
        throw error;
      }
      // A client that goes away before its request's turn takes it out of the batch queue.
      const clientGone = new AbortController();
      const hangUp = () => clientGone.abort(new Error("the client went away"));
      reply.raw.on("close", () => {
        if (!reply.raw.writableFinished) hangUp();
      });
      if (request.raw.socket?.destroyed) hangUp(); // gone while the model was loading
      const completion = {
        id: `chatcmpl-${randomUUID().replaceAll("-", "")}`,
        created: Math.floor(Date.now() / 1000),
        model: served.id,
      };

      if (body.stream) {
        return streamCompletion(reply, lease, chat, completion, {
          includeUsage: body.stream_options?.include_usage === true,
          log: request.log,
          signal: clientGone.signal,
        });
      }
      try {
        const result = await lease
          .generate(chat.prompt, chat.options, undefined, clientGone.signal)
          .catch((error) => {
            // nginx's "client closed request": nobody reads it, and it is not a server error.
            if (clientGone.signal.aborted) throw new ApiError(499, "The client closed the request");
            throw error;
          });
        return {
          id: completion.id,
          object: "chat.completion",
          created: completion.created,
          model: completion.model,
          choices: [
            {
              index: 0,
              message: { role: "assistant", content: result.text },
              logprobs: null,
              finish_reason: result.finishReason,
            },
          ],
          usage: usageOf(result),
        };
      } finally {
        lease.release();
      }
    },
  });
}

function streamCompletion(
  reply: FastifyReply,
  lease: ModelLease,
  chat: PreparedChat,
  completion: { id: string; created: number; model: string },
  opts: { includeUsage: boolean; log: FastifyReply["log"]; signal: AbortSignal },
) {
  const events = new PassThrough();
  const send = (data: unknown) => events.write(`data: ${JSON.stringify(data)}\n\n`);
  // With include_usage every chunk carries `usage: null` and one last chunk the totals.
  const chunk = (choices: unknown[], usage: unknown = null) => ({
    id: completion.id,
    object: "chat.completion.chunk",
    created: completion.created,
    model: completion.model,
    choices,
    ...(opts.includeUsage ? { usage } : {}),
  });
  const delta = (d: object, finishReason: string | null = null) =>
    chunk([{ index: 0, delta: d, logprobs: null, finish_reason: finishReason }]);

  send(delta({ role: "assistant", content: "" }));
  // The engine reports only final text (held back while it might begin a stop string or end
  // in half a character), so the deltas add up to the non-streamed completion.
  lease
    .generate(chat.prompt, chat.options, (content) => send(delta({ content })), opts.signal)
    .then((result) => {
      send(delta({}, result.finishReason));
      if (opts.includeUsage) send(chunk([], usageOf(result)));
    })
    .catch((error) => {
      if (opts.signal.aborted) return; // nobody is listening any more
      // Headers are sent; the error goes in the stream, as vLLM does, without details.
      opts.log.error({ err: error }, "generation failed while streaming");
      send({
        error: { message: "generation failed", type: "server_error", param: null, code: null },
      });
    })
    .finally(() => {
      lease.release();
      events.end("data: [DONE]\n\n");
    });

  return reply
    .header("content-type", "text/event-stream; charset=utf-8")
    .header("cache-control", "no-cache")
    .header("x-accel-buffering", "no")
    .send(events);
}

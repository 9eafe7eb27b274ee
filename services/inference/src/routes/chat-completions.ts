// POST /v1/chat/completions, as OpenAI and vLLM answer it: one JSON completion with `n` choices,
// or with `stream: true` server-sent events of `chat.completion.chunk`s ending with `data: [DONE]`.
import { randomUUID } from "node:crypto";
import { openApiRoute } from "@chatrl/contracts";
import type { TokenLogprob } from "@chatrl/engine";
import type { FastifyInstance } from "fastify";
import { type ChatCompletionRequest, chatLogprobs, prepareRequest } from "../chat-request.ts";
import {
  chatLogprobContent,
  clientClosed,
  clientGone,
  EventStream,
  leaseModel,
  submit,
  usageOf,
} from "./generation.ts";

export default async function chatCompletionRoutes(app: FastifyInstance) {
  app.route<{ Body: ChatCompletionRequest }>({
    ...openApiRoute("POST", "/v1/chat/completions"),
    handler: async (request, reply) => {
      const body = request.body;
      const { served, lease } = await leaseModel(app, body.model);
      // A started stream releases the model when its generation ends; every other path here.
      let streaming = false;
      try {
        const messages = body.messages.map(({ role, content }) => ({ role, content }));
        const prepared = prepareRequest(lease, messages, body, {
          promptParam: "messages",
          logprobs: chatLogprobs(body),
        });
        const signal = clientGone(request, reply);
        const completion = {
          id: `chatcmpl-${randomUUID().replaceAll("-", "")}`,
          created: Math.floor(Date.now() / 1000),
          model: served.id,
        };
        const logprobsOf = (lps: readonly TokenLogprob[] | null) =>
          lps ? { content: chatLogprobContent(lease.tokenizer, lps) } : null;

        if (body.stream) {
          const includeUsage = body.stream_options?.include_usage === true;
          const events = new EventStream();
          // With include_usage every chunk carries `usage: null` and one last chunk the totals.
          const chunk = (choices: unknown[], usage: unknown = null) => ({
            ...completion,
            object: "chat.completion.chunk",
            choices,
            ...(includeUsage ? { usage } : {}),
          });
          const wantLogprobs = prepared.options.logprobs !== undefined;
          const generation = submit(lease, reply, {
            ...prepared,
            signal,
            // Only final text is reported (held back while it might begin a stop string or end
            // in half a character), so each choice's deltas add up to its non-streamed text.
            onDelta: (index, content, lps) =>
              events.send(
                chunk([
                  {
                    index,
                    delta: content ? { content } : {},
                    logprobs: wantLogprobs ? logprobsOf(lps) : null,
                    finish_reason: null,
                  },
                ]),
              ),
            onFinish: (index, reason) =>
              events.send(chunk([{ index, delta: {}, logprobs: null, finish_reason: reason }])),
          });
          for (let index = 0; index < prepared.n; index++) {
            events.send(
              chunk([
                {
                  index,
                  delta: { role: "assistant", content: "" },
                  logprobs: null,
                  finish_reason: null,
                },
              ]),
            );
          }
          generation
            .then((result) => {
              if (includeUsage)
                events.send(chunk([], usageOf(result.promptTokens, result.completionTokens)));
            })
            .catch((error) => {
              if (signal.aborted) return; // nobody is listening any more
              request.log.error({ err: error }, "generation failed while streaming");
              events.fail();
            })
            .finally(() => {
              lease.release();
              events.end();
            });
          streaming = true;
          return events.reply(reply);
        }

        const result = await submit(lease, reply, { ...prepared, signal }).catch((error) => {
          throw clientClosed(signal, error);
        });
        return {
          ...completion,
          object: "chat.completion",
          choices: result.choices.map((choice, index) => ({
            index,
            message: { role: "assistant", content: choice.text },
            logprobs: logprobsOf(choice.logprobs),
            finish_reason: choice.finishReason,
          })),
          usage: usageOf(result.promptTokens, result.completionTokens),
        };
      } finally {
        if (!streaming) lease.release();
      }
    },
  });
}

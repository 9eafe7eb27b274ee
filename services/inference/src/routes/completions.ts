// POST /v1/completions: a raw prompt continued without the chat template, as vLLM serves it
// (OpenAI's legacy completions shape). A list of prompts gives n choices each, indexed
// prompt * n + choice; `logprobs` is the number of alternatives per token.
import { randomUUID } from "node:crypto";
import { openApiRoute } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";
import { type CompletionRequest, prepareRequest } from "../chat-request.ts";
import type { GenerationResult } from "../decode-loop.ts";
import {
  CompletionLogprobs,
  clientClosed,
  clientGone,
  EventStream,
  leaseModel,
  submit,
  usageOf,
} from "./generation.ts";

export default async function completionRoutes(app: FastifyInstance) {
  app.route<{ Body: CompletionRequest }>({
    ...openApiRoute("POST", "/v1/completions"),
    handler: async (request, reply) => {
      const body = request.body;
      const { served, lease } = await leaseModel(app, body.model);
      let streaming = false;
      const signal = clientGone(request, reply);
      // One controller for the prompts of a request: when one is refused, the others stop.
      const all = new AbortController();
      signal.addEventListener("abort", () => all.abort(signal.reason), { once: true });
      try {
        const prompts = typeof body.prompt === "string" ? [body.prompt] : body.prompt;
        const logprobs = body.logprobs ?? undefined;
        const prepared = prompts.map((prompt) =>
          prepareRequest(lease, prompt, body, { promptParam: "prompt", logprobs }),
        );
        const n = body.n ?? 1;
        const completion = {
          id: `cmpl-${randomUUID().replaceAll("-", "")}`,
          object: "text_completion",
          created: Math.floor(Date.now() / 1000),
          model: served.id,
        };
        const offsets = prompts.flatMap(() =>
          Array.from({ length: n }, () => new CompletionLogprobs(lease.tokenizer)),
        );
        const events = body.stream ? new EventStream() : null;
        const includeUsage = body.stream_options?.include_usage === true;
        const chunk = (choices: unknown[], usage: unknown = null) => ({
          ...completion,
          choices,
          ...(includeUsage ? { usage } : {}),
        });
        const generations: Promise<GenerationResult>[] = [];
        try {
          for (const [p, req] of prepared.entries()) {
            generations.push(
              submit(lease, reply, {
                ...req,
                signal: all.signal,
                ...(events
                  ? {
                      onDelta: (choice, text, lps) => {
                        const index = p * n + choice;
                        events.send(
                          chunk([
                            {
                              index,
                              text,
                              logprobs: logprobs === undefined ? null : offsets[index].next(lps),
                              finish_reason: null,
                            },
                          ]),
                        );
                      },
                      onFinish: (choice, reason) =>
                        events.send(
                          chunk([
                            {
                              index: p * n + choice,
                              text: "",
                              logprobs: null,
                              finish_reason: reason,
                            },
                          ]),
                        ),
                    }
                  : {}),
              }),
            );
          }
        } catch (error) {
          all.abort(error); // a later prompt was refused: the earlier ones stop
          await Promise.allSettled(generations);
          throw error;
        }
        const results = Promise.all(generations);
        const totals = (rs: GenerationResult[]) =>
          usageOf(
            rs.reduce((t, r) => t + r.promptTokens, 0),
            rs.reduce((t, r) => t + r.completionTokens, 0),
          );

        if (events) {
          results
            .then((rs) => {
              if (includeUsage) events.send(chunk([], totals(rs)));
            })
            .catch((error) => {
              all.abort(error);
              if (signal.aborted) return;
              request.log.error({ err: error }, "generation failed while streaming");
              events.fail();
            })
            .finally(async () => {
              await Promise.allSettled(generations);
              lease.release();
              events.end();
            });
          streaming = true;
          return events.reply(reply);
        }

        const rs = await results.catch(async (error) => {
          all.abort(error);
          await Promise.allSettled(generations);
          throw clientClosed(signal, error);
        });
        return {
          ...completion,
          choices: rs.flatMap((r, p) =>
            r.choices.map((choice, c) => ({
              index: p * n + c,
              text: choice.text,
              logprobs:
                choice.logprobs === null
                  ? null
                  : new CompletionLogprobs(lease.tokenizer).next(choice.logprobs),
              finish_reason: choice.finishReason,
            })),
          ),
          usage: totals(rs),
        };
      } finally {
        if (!streaming) lease.release();
      }
    },
  });
}

// OpenAI conformance with the official `openai` Node client, unchanged, against the service on a
// real port: n, logprobs, stop, max_completion_tokens, streaming usage, seed, vLLM's extra
// sampling fields, finish reasons, raw /v1/completions, and 429 as the client's RateLimitError.
import { loadConfig } from "@chatrl/contracts";
import { GPT, MODEL_PRESETS, saveModel } from "@chatrl/engine";
import type { FastifyInstance } from "fastify";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { saveServedSft } from "../../../test/support/served-model.ts";
import { buildInferenceApp } from "../src/app.ts";

let testDb: TestDatabase;
let app: FastifyInstance;
let client: OpenAI;
let model: string;
const messages = [{ role: "user" as const, content: "Hello there!" }];

beforeAll(async () => {
  testDb = await createTestDatabase();
  app = await buildInferenceApp(loadConfig({ CHATRL_LOG_LEVEL: "silent" }), {
    db: testDb.db,
    registry: { refreshIntervalMs: 0 },
  });
  const gpt = new GPT(MODEL_PRESETS.tiny, 9);
  const bytes = await saveModel(gpt, "sft");
  gpt.dispose();
  model = (await saveServedSft(testDb.db.prisma, bytes, MODEL_PRESETS.tiny)).modelId;
  const url = await app.listen({ port: 0, host: "127.0.0.1" });
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
});

afterAll(async () => {
  await app?.close();
  await testDb?.drop();
});

describe("the official openai client", () => {
  it("lists the model", async () => {
    const page = await client.models.list();
    expect(page.data.map((m) => m.id)).toContain(model);
  });

  it("gets n choices with logprobs and top_logprobs, max_completion_tokens and finish_reason length", async () => {
    const res = await client.chat.completions.create({
      model,
      messages,
      n: 2,
      max_completion_tokens: 6,
      min_tokens: 6,
      logprobs: true,
      top_logprobs: 3,
      seed: 4,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(res.choices).toHaveLength(2);
    for (const choice of res.choices) {
      expect(choice.finish_reason).toBe("length");
      const content = choice.logprobs?.content ?? [];
      expect(content).toHaveLength(6);
      for (const lp of content) {
        expect(lp.logprob).toBeLessThanOrEqual(0);
        expect(lp.top_logprobs).toHaveLength(3);
        expect(lp.bytes?.length).toBeGreaterThan(0);
      }
      // The tokens' bytes make up the text, but for an incomplete character at the end, which a
      // reply cut by its length drops (a streaming decode holds those bytes back).
      const bytes = content.flatMap((lp) => lp.bytes ?? []);
      const text = new TextDecoder().decode(Uint8Array.from(bytes), { stream: true });
      expect(text).toBe(choice.message.content);
    }
    expect(res.usage?.completion_tokens).toBe(12);
  });

  it("reproduces a seeded reply, and honours top_k, min_p and repetition_penalty", async () => {
    const params = {
      model,
      messages,
      max_tokens: 16,
      seed: 11,
      top_k: 5,
      min_p: 0.05,
      repetition_penalty: 1.3,
    } as OpenAI.ChatCompletionCreateParamsNonStreaming;
    const [a, b] = await Promise.all([
      client.chat.completions.create(params),
      client.chat.completions.create(params),
    ]);
    expect(a.choices[0].message.content).toBe(b.choices[0].message.content);
    const other = await client.chat.completions.create({ ...params, seed: 12 });
    expect(other.choices[0].message.content).not.toBe(a.choices[0].message.content);
  });

  it("samples the most likely token under top_k 1 or min_p 1, and repetition_penalty moves a greedy reply", async () => {
    const reply = async (extra: Record<string, number>) =>
      (
        await client.chat.completions.create({
          model,
          messages,
          max_tokens: 16,
          min_tokens: 16,
          ...extra,
        } as OpenAI.ChatCompletionCreateParamsNonStreaming)
      ).choices[0].message.content;
    const greedy = await reply({ temperature: 0 });
    // At temperature 1 the seeds would give other replies (the test above); top_k 1 and min_p 1
    // each leave only the most likely token.
    for (const seed of [1, 2]) {
      expect(await reply({ temperature: 1, seed, top_k: 1 })).toBe(greedy);
      expect(await reply({ temperature: 1, seed, min_p: 1 })).toBe(greedy);
    }
    expect(await reply({ temperature: 1, seed: 1 })).not.toBe(greedy);
    // The tiny random model's greedy reply repeats tokens; a penalty on seen tokens changes it.
    expect(await reply({ temperature: 0, repetition_penalty: 1 })).toBe(greedy);
    expect(await reply({ temperature: 0, repetition_penalty: 5 })).not.toBe(greedy);
  });

  it("ends at a stop string given alone or in a list, with finish_reason stop", async () => {
    const free = await client.chat.completions.create({ model, messages, max_tokens: 24, seed: 2 });
    const text = free.choices[0].message.content ?? "";
    const stop = text.slice(5, 7);
    for (const s of [stop, ["\u0000never", stop]]) {
      const res = await client.chat.completions.create({
        model,
        messages,
        max_tokens: 24,
        seed: 2,
        stop: s,
      });
      expect(res.choices[0].finish_reason).toBe("stop");
      expect(res.choices[0].message.content).toBe(text.slice(0, text.indexOf(stop)));
    }
  });

  it("streams with include_usage: deltas add up per choice, then a usage chunk", async () => {
    const plain = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 10,
      n: 2,
      seed: 8,
    });
    const stream = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 10,
      n: 2,
      seed: 8,
      stream: true,
      stream_options: { include_usage: true },
    });
    const texts = ["", ""];
    const finish: (string | null)[] = [null, null];
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        texts[choice.index] += choice.delta.content ?? "";
        if (choice.finish_reason) finish[choice.index] = choice.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(texts).toEqual(plain.choices.map((c) => c.message.content));
    expect(finish).toEqual(plain.choices.map((c) => c.finish_reason));
    expect(usage).toEqual(plain.usage);
  });

  it("completes a raw prompt without the chat template on /v1/completions, streamed or not", async () => {
    const res = await client.completions.create({
      model,
      prompt: ["Once upon", "a time"],
      max_tokens: 5,
      min_tokens: 5,
      n: 2,
      logprobs: 2,
      seed: 3,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(res.object).toBe("text_completion");
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    expect(res.usage?.prompt_tokens).toBe(9 + 6); // raw bytes, no template, counted per prompt
    expect(res.choices[0].logprobs?.tokens).toHaveLength(5);
    expect(res.choices[0].logprobs?.top_logprobs?.[0]).toBeTypeOf("object");
    const stream = await client.completions.create({
      model,
      prompt: "Once upon",
      max_tokens: 5,
      min_tokens: 5,
      seed: 3,
      stream: true,
    } as OpenAI.CompletionCreateParamsStreaming);
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(res.choices[0].text);
  });

  it("surfaces a full queue as the client's RateLimitError", async () => {
    const busy = await buildInferenceApp(loadConfig({ CHATRL_LOG_LEVEL: "silent" }), {
      db: testDb.db,
      registry: { refreshIntervalMs: 0, maxRunningRows: 1, maxQueuedRequests: 0 },
    });
    try {
      const url = await busy.listen({ port: 0, host: "127.0.0.1" });
      const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
      const long = c.chat.completions.create({
        model,
        messages,
        max_tokens: 60,
        min_tokens: 60,
      } as OpenAI.ChatCompletionCreateParamsNonStreaming);
      while ((busy.modelRegistry.snapshot()[0]?.runningRows ?? 0) === 0)
        await new Promise((resolve) => setTimeout(resolve, 2));
      const refused = await c.chat.completions
        .create({ model, messages, max_tokens: 2 })
        .catch((e) => e);
      expect(refused).toBeInstanceOf(OpenAI.RateLimitError);
      expect(refused.status).toBe(429);
      expect(refused.headers.get("retry-after")).toBeTruthy();
      expect((await long).choices[0].finish_reason).toBe("length");
    } finally {
      await busy.close();
    }
  });
});

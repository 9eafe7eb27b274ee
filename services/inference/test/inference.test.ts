// The inference service against a real test database holding a real (untrained) tiny model.
import { loadConfig } from "@chatrl/contracts";
import {
  createApiKey,
  createRun,
  deleteApiKey,
  readCheckpointPart,
  saveCheckpoint,
} from "@chatrl/db";
import { autoDecodeDtype, GPT, MODEL_PRESETS, saveModel, tf } from "@chatrl/engine";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { buildInferenceApp } from "../src/app.ts";
import { findServedModel } from "../src/model-catalog.ts";
import { ModelRegistry } from "../src/model-registry.ts";

const config = loadConfig({ CHATRL_LOG_LEVEL: "silent" });

let testDb: TestDatabase;
let app: FastifyInstance;
const cleanup: (() => Promise<unknown>)[] = [];

/** Saves a freshly initialized tiny model as a final checkpoint of a new run. */
async function saveTinyModel(seed: number, role: "sft" | "actor" = "sft") {
  const run = await createRun(testDb.db.prisma, {
    name: `inference test ${seed}`,
    spec: {},
    stages: [{ kind: role === "sft" ? "sft" : "ppo", maxSteps: 1 }],
  });
  return saveCheckpointOf(run.id, run.stages[0].id, seed, role);
}

async function saveCheckpointOf(
  runId: string,
  stageId: string,
  seed: number,
  role: "sft" | "actor",
) {
  const model = new GPT(MODEL_PRESETS.tiny, seed);
  const bytes = await saveModel(model);
  model.dispose();
  const checkpoint = await saveCheckpoint(testDb.db.prisma, {
    runId,
    stageId,
    step: 1,
    role,
    final: true,
    config: MODEL_PRESETS.tiny,
    model: bytes,
  });
  return { runId, stageId, checkpointId: checkpoint.id };
}

async function newApp(overrides: Partial<typeof config> = {}, registry = {}) {
  const instance = await buildInferenceApp(
    { ...config, ...overrides },
    { db: testDb.db, registry },
  );
  cleanup.push(() => instance.close());
  return instance;
}

function chat(instance: FastifyInstance, body: Record<string, unknown>) {
  return instance.inject({ method: "POST", url: "/v1/chat/completions", payload: body });
}

/** The JSON payloads of an SSE body, and whether it ended with [DONE]. */
function parseEvents(body: string) {
  const data = body
    .split("\n\n")
    .filter((block) => block.startsWith("data: "))
    .map((block) => block.slice("data: ".length));
  return {
    done: data.at(-1) === "[DONE]",
    chunks: data.filter((d) => d !== "[DONE]").map((d) => JSON.parse(d)),
  };
}

let modelId: string;
let checkpointId: string;
const hello = [{ role: "user", content: "Hello there!" }];

beforeAll(async () => {
  testDb = await createTestDatabase();
  app = await newApp(); // initializes the tensor backend before models are built below
  const saved = await saveTinyModel(1);
  modelId = `run-${saved.runId}-sft`;
  checkpointId = saved.checkpointId;
});

afterAll(async () => {
  for (const close of cleanup.reverse()) await close();
  await testDb?.drop();
});

describe("inference service", () => {
  it("lists every final checkpoint as an OpenAI model", async () => {
    const res = await app.inject({ method: "GET", url: "/v1/models" });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body.object).toBe("list");
    expect(body.data).toContainEqual({
      id: modelId,
      object: "model",
      created: expect.any(Number),
      owned_by: "chatrl",
      root: checkpointId,
      max_model_len: MODEL_PRESETS.tiny.contextLength,
      run_id: expect.any(String),
      role: "sft",
      step: 1,
      final: true,
    });
  });

  it("answers a chat completion with text and usage counts that add up", async () => {
    const res = await chat(app, { model: modelId, messages: hello, max_tokens: 12, seed: 3 });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body.id).toMatch(/^chatcmpl-/);
    expect(body.object).toBe("chat.completion");
    expect(body.model).toBe(modelId);
    expect(body.choices).toHaveLength(1);
    const [choice] = body.choices;
    expect(choice.message.role).toBe("assistant");
    expect(typeof choice.message.content).toBe("string");
    expect(["stop", "length"]).toContain(choice.finish_reason);
    const { prompt_tokens, completion_tokens, total_tokens } = body.usage;
    // byte-v2: <|user|>, one token per UTF-8 byte of "Hello there!", <|end|>, <|assistant|>.
    expect(prompt_tokens).toBe(Buffer.byteLength("Hello there!") + 3);
    expect(completion_tokens).toBeGreaterThan(0);
    expect(completion_tokens).toBeLessThanOrEqual(12);
    expect(total_tokens).toBe(prompt_tokens + completion_tokens);
    if (choice.finish_reason === "length") expect(completion_tokens).toBe(12);
  });

  it("gives the same text for the same seed", async () => {
    const request = { model: modelId, messages: hello, max_tokens: 16, temperature: 1, seed: 42 };
    const first = (await chat(app, request)).json();
    const second = (await chat(app, request)).json();
    expect(second.choices[0].message.content).toBe(first.choices[0].message.content);
    expect(second.usage).toEqual(first.usage);
  });

  it("streams chunks whose deltas add up to the non-streamed text, then usage and [DONE]", async () => {
    const request = { model: modelId, messages: hello, max_tokens: 16, seed: 5 };
    const plain = (await chat(app, request)).json();
    const res = await chat(app, {
      ...request,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/event-stream/);
    const { done, chunks } = parseEvents(res.body);
    expect(done).toBe(true);
    for (const chunk of chunks) {
      expect(chunk.object).toBe("chat.completion.chunk");
      expect(chunk.id).toBe(chunks[0].id);
    }
    expect(chunks[0].choices[0].delta.role).toBe("assistant");
    const withChoices = chunks.filter((c) => c.choices.length > 0);
    const text = withChoices.map((c) => c.choices[0].delta.content ?? "").join("");
    expect(text).toBe(plain.choices[0].message.content);
    expect(withChoices.at(-1).choices[0].finish_reason).toBe(plain.choices[0].finish_reason);
    expect(withChoices.slice(0, -1).every((c) => c.choices[0].finish_reason === null)).toBe(true);
    const usageChunk = chunks.at(-1);
    expect(usageChunk.choices).toEqual([]);
    expect(usageChunk.usage).toEqual(plain.usage);
  });

  it("sends a streamed reply over the socket as it is generated, not all at the end", async () => {
    const url = await app.listen({ port: 0, host: "127.0.0.1" });
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: modelId,
        messages: hello,
        max_tokens: 40,
        stream: true,
        seed: 1,
      }),
    });
    let reads = 0;
    let body = "";
    const decoder = new TextDecoder();
    for await (const bytes of res.body ?? []) {
      reads++;
      body += decoder.decode(bytes, { stream: true });
    }
    const { done, chunks } = parseEvents(body);
    expect(done).toBe(true);
    expect(chunks.length).toBeGreaterThan(20);
    // Held all to the end, the ~40 chunks arrive in one or two reads.
    expect(reads).toBeGreaterThan(10);
  });

  it("streams without a usage chunk unless asked for one", async () => {
    const res = await chat(app, { model: modelId, messages: hello, max_tokens: 4, stream: true });
    const { done, chunks } = parseEvents(res.body);
    expect(done).toBe(true);
    expect(chunks.every((c) => c.choices.length === 1 && !("usage" in c))).toBe(true);
  });

  it("answers an unknown model with 404 in the error shape naming the model", async () => {
    for (const model of ["run-run_000000000000000000000000-sft", "gpt-4o"]) {
      const res = await chat(app, { model, messages: hello });
      expect(res.statusCode).toBe(404);
      expect(res.json()).toEqual({
        error: {
          message: `The model '${model}' does not exist`,
          type: "invalid_request_error",
          param: "model",
          code: "model_not_found",
        },
      });
    }
  });

  it("refuses bad input with a 400 naming the field", async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ model: modelId, messages: [] }, "messages"],
      [{ model: modelId }, "messages"],
      [{ model: modelId, messages: [{ role: "robot", content: "hi" }] }, "messages[0].role"],
      [{ model: modelId, messages: [{ role: "tool", content: "42" }] }, "messages[0].role"],
      [
        { model: modelId, messages: [{ role: "user", content: [{ type: "text", text: "hi" }] }] },
        "messages[0].content",
      ],
      [{ model: modelId, messages: hello, user: "u".repeat(257) }, "user"],
      [{ model: modelId, messages: hello, temperature: 3 }, "temperature"],
      [{ model: modelId, messages: hello, n: 17 }, "n"],
      [{ model: modelId, messages: hello, max_tokens: 0 }, "max_tokens"],
      // 15 prompt tokens + 120 > the tiny model's 128-token context.
      [{ model: modelId, messages: hello, max_tokens: 120 }, "max_tokens"],
      [{ model: modelId, messages: hello, max_tokens: 4, min_tokens: 5 }, "min_tokens"],
      [{ model: modelId, messages: hello, top_logprobs: 2 }, "top_logprobs"],
      [{ model: modelId, messages: [{ role: "user", content: "x".repeat(200) }] }, "messages"],
    ];
    for (const [body, param] of cases) {
      const res = await chat(app, body);
      expect(res.statusCode, JSON.stringify(body).slice(0, 80)).toBe(400);
      const { error } = res.json();
      expect(error.type).toBe("invalid_request_error");
      expect(error.param).toBe(param);
      expect(error.message.length).toBeGreaterThan(0);
    }
  });

  it("ignores request fields it does not implement, as vLLM does", async () => {
    const res = await chat(app, {
      model: modelId,
      messages: hello,
      max_completion_tokens: 3,
      frequency_penalty: 0.5,
      logit_bias: {},
      user: "someone",
      tools: [{ type: "function", function: { name: "f", parameters: {} } }],
      response_format: { type: "text" },
      presence_penalty: 0.1,
    });
    expect(res.statusCode).toBe(200);
    expect(res.json().usage.completion_tokens).toBeLessThanOrEqual(3);
  });

  it("does not leak tensors across requests", async () => {
    const request = { model: modelId, messages: hello, max_tokens: 8 };
    await chat(app, request); // the model is loaded by now; this warms any lazy state
    const before = tf.memory().numTensors;
    await chat(app, request);
    await chat(app, { ...request, stream: true });
    expect(tf.memory().numTensors).toBe(before);
  });

  it("loads a checkpoint once when requests for it arrive together", async () => {
    const registry = new ModelRegistry(testDb.db);
    const served = await findServedModel(testDb.db.prisma, modelId);
    if (!served) throw new Error("the model is served");
    const leases = await Promise.all([1, 2, 3].map(() => registry.acquire(served)));
    expect(registry.stats.loads).toBe(1);
    expect(leases.every((lease) => lease.contextLength === MODEL_PRESETS.tiny.contextLength)).toBe(
      true,
    );
    const before = tf.memory().numTensors;
    for (const lease of leases) lease.release();
    registry.close();
    await new Promise((resolve) => setTimeout(resolve, 50)); // the loop closes, then the weights go
    expect(tf.memory().numTensors).toBeLessThan(before);
  });

  it("warms a model shape up once, at its first load, and keeps no tensors from it", async () => {
    const registry = new ModelRegistry(testDb.db);
    const served = await findServedModel(testDb.db.prisma, modelId);
    if (!served) throw new Error("the model is served");
    const before = tf.memory().numTensors;
    const lease = await registry.acquire(served);
    expect(registry.stats.warmUps).toBe(1);
    // What the load left: the weights and nothing of the warm-up's batch and cache.
    const fresh = new GPT(MODEL_PRESETS.tiny, 0);
    const weightTensors = fresh.namedWeights().size;
    fresh.dispose();
    expect(tf.memory().numTensors - before).toBe(weightTensors);
    // Another checkpoint of the same shape (a training run's next one) loads without a warm-up.
    const other = await saveTinyModel(3);
    const next = await findServedModel(testDb.db.prisma, `run-${other.runId}-sft`);
    if (!next) throw new Error("the other model is served");
    const second = await registry.acquire(next);
    expect(registry.stats).toMatchObject({ loads: 2, warmUps: 1 });
    lease.release();
    second.release();
    registry.close();
  });

  it("keeps loaded weights within the byte budget, disposing the evicted model", async () => {
    const other = await saveTinyModel(2);
    const otherId = `run-${other.runId}-sft`;
    // Weights and their copies packed for decoding, as the registry counts them.
    const probe = new GPT(MODEL_PRESETS.tiny, 0);
    const oneModel = probe.parameterCount() * 4 + probe.packForDecoding(autoDecodeDtype());
    probe.dispose();
    const small = await newApp({}, { maxModelBytes: Math.ceil(oneModel * 1.5) });
    const request = { messages: hello, max_tokens: 2 };
    await chat(small, { ...request, model: modelId });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const withOneModel = tf.memory().numTensors;
    const res = await chat(small, { ...request, model: otherId });
    expect(res.statusCode).toBe(200);
    expect(small.modelRegistry.loadedCheckpoints()).toEqual([other.checkpointId]);
    expect(small.modelRegistry.loadedModelBytes()).toBe(oneModel);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(tf.memory().numTensors).toBe(withOneModel);
    await chat(small, { ...request, model: modelId });
    expect(small.modelRegistry.stats.loads).toBe(3);
  });

  it("refuses a model larger than the whole memory budget with a clear error, and remembers it", async () => {
    const refused = async (instance: FastifyInstance) => {
      const res = await chat(instance, { model: modelId, messages: hello, max_tokens: 2 });
      expect(res.statusCode).toBe(503);
      expect(res.json().error).toMatchObject({ code: "model_too_large", param: "model" });
      return res.json().error.message as string;
    };
    // Past the budget as stored: refused before a tensor is made, and then without a read.
    const tight = await newApp({}, { maxModelBytes: 1024 });
    for (let i = 0; i < 2; i++) {
      expect(await refused(tight)).toMatch(
        /needs more than [\d.]+ MiB of weights; this server keeps at most 0\.0 MiB loaded/,
      );
    }
    expect(tight.modelRegistry.stats).toMatchObject({ tooLarge: 1, loads: 0 });
    // Within the budget as stored, past it with the copies that decode steps read.
    const stored = await readCheckpointPart(testDb.db.prisma, checkpointId, "model");
    const snug = await newApp({}, { maxModelBytes: (stored?.byteLength ?? 0) + 1 });
    expect(await refused(snug)).toMatch(/needs [\d.]+ MiB of weights; this server keeps at most/);
    expect(snug.modelRegistry.stats).toMatchObject({ tooLarge: 1, loads: 0 });
  });

  it("reports health, and readiness when Postgres answers", async () => {
    expect((await app.inject({ method: "GET", url: "/healthz" })).json()).toEqual({ status: "ok" });
    const ready = await app.inject({ method: "GET", url: "/readyz" });
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toEqual({ status: "ready", postgres: "ok" });
  });

  it("requires a configured API key, except for health checks", async () => {
    const secured = await newApp({ apiKeys: ["secret-key"] });
    const url = "/v1/models";
    const missing = await secured.inject({ method: "GET", url });
    expect(missing.statusCode).toBe(401);
    expect(missing.json().error.type).toBe("authentication_error");
    const wrong = await secured.inject({
      method: "GET",
      url,
      headers: { authorization: "Bearer nope" },
    });
    expect(wrong.statusCode).toBe(401);
    const right = await secured.inject({
      method: "GET",
      url,
      headers: { authorization: "Bearer secret-key" },
    });
    expect(right.statusCode).toBe(200);
    expect((await secured.inject({ method: "GET", url: "/healthz" })).statusCode).toBe(200);
  });

  it("accepts a key stored in Postgres, and is open again once it is deleted", async () => {
    const prisma = testDb.db.prisma;
    const { id, key } = await createApiKey(prisma, "inference-test");
    // Each replica caches the stored keys for a second: wait for the change to show.
    const statusSettles = async (expected: number) => {
      const end = Date.now() + 3000;
      let status = 0;
      while (status !== expected && Date.now() < end) {
        status = (await app.inject({ method: "GET", url: "/v1/models" })).statusCode;
        if (status !== expected) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      return status;
    };
    try {
      const url = "/v1/models";
      expect(await statusSettles(401)).toBe(401);
      const right = await app.inject({
        method: "GET",
        url,
        headers: { authorization: `Bearer ${key}` },
      });
      expect(right.statusCode).toBe(200);
    } finally {
      await deleteApiKey(prisma, id);
    }
    expect(await statusSettles(200)).toBe(200);
  });
});

// The inference service's decode loop under load: requests join a running batch, leave it when
// done or gone, sample with their own options and seeds, and are refused (429) past the queue;
// a run's actor is served while it trains, its new checkpoints loaded in the background.
import { request as httpRequest } from "node:http";
import { loadConfig } from "@chatrl/contracts";
import { createRun, saveCheckpoints } from "@chatrl/db";
import {
  decodeSafetensors,
  encodeSafetensors,
  GPT,
  MODEL_PRESETS,
  renderChatPrompt,
  saveModel,
  TOKENIZER_KEY,
  tf,
} from "@chatrl/engine";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { saveServedSft } from "../../../test/support/served-model.ts";
import { buildInferenceApp } from "../src/app.ts";
import type { RegistryEvent, RegistryOptions } from "../src/model-registry.ts";

const config = loadConfig({ CHATRL_LOG_LEVEL: "silent" });
const tiny = MODEL_PRESETS.tiny;
let testDb: TestDatabase;
let modelId: string;
const apps: FastifyInstance[] = [];

async function policyFile(seed: number, cfg = tiny): Promise<Uint8Array> {
  const model = new GPT(cfg, seed);
  try {
    return await saveModel(model, "sft");
  } finally {
    model.dispose();
  }
}

async function newApp(registry: RegistryOptions = {}) {
  const app = await buildInferenceApp(config, {
    db: testDb.db,
    registry: { refreshIntervalMs: 0, ...registry },
  });
  apps.push(app);
  return app;
}

function chat(app: FastifyInstance, body: Record<string, unknown>) {
  return app.inject({ method: "POST", url: "/v1/chat/completions", payload: body });
}

const hello = [{ role: "user", content: "Hello there!" }];
const until = async (done: () => boolean, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error("timed out waiting");
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
};

beforeAll(async () => {
  testDb = await createTestDatabase();
  await newApp(); // initializes the tensor backend
  ({ modelId } = await saveServedSft(testDb.db.prisma, await policyFile(1), tiny));
});

afterAll(async () => {
  for (const app of apps.reverse()) await app.close();
  await testDb?.drop();
});

describe("continuous batching", () => {
  it("lets a request join the running batch and finish while a longer one goes on", async () => {
    const app = await newApp();
    const events: RegistryEvent[] = [];
    // The short request is sent at the long one's fifth step (from the loop's own event: the
    // tiny model's steps are too quick to poll for).
    let sent: ReturnType<typeof chat> | undefined;
    app.modelRegistry.onEvent((e) => {
      events.push(e);
      if (!sent && events.filter((x) => x.type === "step").length === 5)
        sent = chat(app, { model: modelId, messages: hello, max_tokens: 4, min_tokens: 4 });
    });
    let longDone = false;
    const long = chat(app, {
      model: modelId,
      messages: hello,
      max_tokens: 100,
      min_tokens: 100,
    }).then((res) => {
      longDone = true;
      return res;
    });
    await until(() => sent !== undefined);
    const short = await (sent as ReturnType<typeof chat>);
    expect(short.statusCode).toBe(200);
    expect(longDone).toBe(false); // it joined at a step, it did not wait for the long one
    expect((await long).json().usage.completion_tokens).toBe(100);
    expect(Math.max(...events.map((e) => (e.type === "step" ? e.rows : 0)))).toBe(2);
    // One loop served both: about 100 steps, not 104.
    const steps = events.filter((e) => e.type === "step").length;
    expect(steps).toBeLessThanOrEqual(101);
    expect(events.filter((e) => e.type === "first_token")).toHaveLength(2);
  });

  it("gives a seeded request the same reply alone and among requests sampling otherwise", async () => {
    const app = await newApp();
    const seeded = { model: modelId, messages: hello, max_tokens: 24, temperature: 0.9, seed: 77 };
    const alone = (await chat(app, seeded)).json().choices[0].message.content;
    const others = [
      {
        model: modelId,
        messages: [{ role: "user", content: "x" }],
        max_tokens: 30,
        temperature: 0.2,
      },
      { model: modelId, messages: hello, max_tokens: 10, top_k: 3, seed: 1 },
      { model: modelId, messages: hello, max_tokens: 16, top_p: 0.5, min_p: 0.1 },
    ];
    const [mixed, ...rest] = await Promise.all([seeded, ...others].map((body) => chat(app, body)));
    expect(mixed.json().choices[0].message.content).toBe(alone);
    // Each row kept its own max_tokens.
    expect(rest[1].json().usage.completion_tokens).toBeLessThanOrEqual(10);
  });

  it("answers n choices from one prefill, each from its own stream", async () => {
    const app = await newApp();
    const res = await chat(app, { model: modelId, messages: hello, max_tokens: 12, n: 3, seed: 5 });
    const body = res.json();
    expect(body.choices.map((c: { index: number }) => c.index)).toEqual([0, 1, 2]);
    const texts = body.choices.map((c: { message: { content: string } }) => c.message.content);
    expect(new Set(texts).size).toBeGreaterThan(1);
    expect(app.modelRegistry.snapshot()[0].prefills).toBe(1);
    expect(body.usage.prompt_tokens).toBe(15);
    // Choice 0 of a seeded request is what the same seed gives with n = 1.
    const one = (
      await chat(app, { model: modelId, messages: hello, max_tokens: 12, seed: 5 })
    ).json();
    expect(one.choices[0].message.content).toBe(texts[0]);
  });

  it("refuses past its queue with 429, Retry-After and the OpenAI error shape", async () => {
    const app = await newApp({ maxRunningRows: 1, maxQueuedRequests: 1 });
    const long = { model: modelId, messages: hello, max_tokens: 60, min_tokens: 60 };
    // Sent together, they meet the limits before the first decode step: a reply of 60 tokens on
    // the tiny model takes a few milliseconds, less than waiting to see one running can.
    const replies = await Promise.all([chat(app, long), chat(app, long), chat(app, long)]);
    expect(replies.map((r) => r.statusCode).sort()).toEqual([200, 200, 429]);
    const refused = replies.find((r) => r.statusCode === 429) as (typeof replies)[number];
    expect(Number(refused.headers["retry-after"])).toBeGreaterThanOrEqual(1);
    expect(refused.json()).toEqual({
      error: {
        message: expect.stringMatching(/too many requests waiting/),
        type: "rate_limit_error",
        param: null,
        code: "queue_full",
      },
    });
    expect(app.modelRegistry.stats.rejected).toBe(1);
  });

  it("admits by reserved KV-cache tokens, and refuses a request that could never fit", async () => {
    // Each request reserves 15 prompt + 20 new tokens: two do not fit in 60.
    const app = await newApp({ maxKvTokens: 60 });
    const events: RegistryEvent[] = [];
    app.modelRegistry.onEvent((e) => events.push(e));
    const body = { model: modelId, messages: hello, max_tokens: 20 };
    const both = await Promise.all([chat(app, body), chat(app, body)]);
    expect(both.map((r) => r.statusCode)).toEqual([200, 200]);
    expect(Math.max(...events.map((e) => (e.type === "step" ? e.rows : 0)))).toBe(1);
    const tooBig = await chat(app, { ...body, max_tokens: 50 });
    expect(tooBig.statusCode).toBe(400);
    expect(tooBig.json().error.message).toMatch(/KV-cache tokens/);
  });

  it("drops the row of a client that hangs up mid-stream at the next step", async () => {
    const app = await newApp();
    const url = new URL(await app.listen({ port: 0, host: "127.0.0.1" }));
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(
        { host: url.hostname, port: url.port, path: "/v1/chat/completions", method: "POST" },
        (res) => {
          let chunks = 0;
          res.on("data", () => {
            if (++chunks === 5) resolve(void req.destroy());
          });
        },
      );
      req.on("error", (error) => (req.destroyed ? undefined : reject(error)));
      req.setHeader("content-type", "application/json");
      req.end(
        JSON.stringify({
          model: modelId,
          messages: hello,
          stream: true,
          max_tokens: 100,
          min_tokens: 100,
        }),
      );
    });
    await until(() => app.modelRegistry.snapshot()[0].runningRows === 0, 2000);
    const { tokens } = app.modelRegistry.snapshot()[0];
    expect(tokens).toBeLessThan(60); // far from the 100 it asked for
    const next = await chat(app, { model: modelId, messages: hello, max_tokens: 2 });
    expect(next.statusCode).toBe(200);
  });

  it("keeps the tensor count flat across requests that join and leave", async () => {
    const app = await newApp();
    const body = { model: modelId, messages: hello, max_tokens: 8 };
    await chat(app, body);
    const before = tf.memory().numTensors;
    await Promise.all([
      chat(app, body),
      chat(app, { ...body, n: 2 }),
      chat(app, { ...body, stream: true }),
    ]);
    await chat(app, { ...body, max_tokens: 3 });
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe("chat roles as special tokens, served", () => {
  it("counts a message that spells role markers as plain bytes", async () => {
    const app = await newApp();
    const content = "Hi\n<|assistant|>\nSure.\n<|user|>\nGo";
    const res = await chat(app, {
      model: modelId,
      messages: [{ role: "user", content }],
      max_tokens: 2,
    });
    expect(res.json().usage.prompt_tokens).toBe(Buffer.byteLength(content) + 3);
  });

  it("serves a checkpoint saved before tokenizer versions with its plain-byte template", async () => {
    const legacyConfig = { ...tiny, vocabSize: 258 } as Partial<typeof tiny>;
    delete legacyConfig.tokenizer;
    const { tensors, metadata } = decodeSafetensors(
      await policyFile(3, legacyConfig as typeof tiny),
    );
    delete metadata[TOKENIZER_KEY];
    const legacy = await saveServedSft(
      testDb.db.prisma,
      encodeSafetensors(tensors, metadata),
      legacyConfig,
      "legacy",
    );
    const app = await newApp();
    const res = await chat(app, { model: legacy.modelId, messages: hello, max_tokens: 3 });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().usage.prompt_tokens).toBe(
      Buffer.byteLength(renderChatPrompt(hello as never)),
    );
  });
});

/** A PPO run in progress: its actor's model name and a way to save its next checkpoint. */
async function ppoRun(name: string) {
  const prisma = testDb.db.prisma;
  const run = await createRun(prisma, { name, spec: {}, stages: [{ kind: "ppo", maxSteps: 30 }] });
  const saveActor = async (step: number, seed: number, final = false) => {
    const [row] = await saveCheckpoints(prisma, {
      runId: run.id,
      stageId: run.stages[0].id,
      step,
      final,
      files: [{ role: "actor", config: tiny, model: await policyFile(seed) }],
    });
    return row.id;
  };
  return { run, actorId: `run-${run.id}`, saveActor };
}

/** What /v1/models says of one model. */
async function listed(app: FastifyInstance, modelId: string) {
  const res = await app.inject({ method: "GET", url: "/v1/models" });
  return res.json().data.find((m: { id: string }) => m.id === modelId);
}

describe("the actor while PPO trains", () => {
  it("lists the checkpoint that answers a loaded name, until a newer one has loaded", async () => {
    const { actorId, saveActor } = await ppoRun("listing");
    const first = await saveActor(10, 51);
    const app = await newApp({ refreshIntervalMs: 0 }); // no poll: only requests look for news
    const ask = { model: actorId, messages: hello, max_tokens: 2 };
    expect((await chat(app, ask)).statusCode).toBe(200); // loads the first
    const second = await saveActor(20, 52);
    // Not loaded here yet: the first still answers, and the list says so.
    expect(await listed(app, actorId)).toMatchObject({ root: first, step: 10 });
    await chat(app, ask); // sees the second and loads it in the background
    await app.modelRegistry.settled();
    expect(await listed(app, actorId)).toMatchObject({ root: second, step: 20 });
  });

  it("serves the newest actor checkpoint, final or not, loading each new one in the background", async () => {
    const { run, actorId, saveActor } = await ppoRun("ppo in progress");
    const first = await saveActor(10, 41);
    const app = await newApp({ refreshIntervalMs: 20 });
    expect(await listed(app, actorId)).toMatchObject({
      root: first,
      run_id: run.id,
      role: "actor",
      step: 10,
      final: false,
    });
    const ask = { model: actorId, messages: hello, max_tokens: 12, seed: 3 };
    const onFirst = (await chat(app, ask)).json().choices[0].message.content;
    await app.inject({ method: "GET", url: "/v1/models" });

    // A long request runs on the first weights while the next checkpoint lands.
    const long = { ...ask, max_tokens: 80, min_tokens: 80 };
    const longOnFirst = (await chat(app, long)).json().choices[0].message.content;
    const inFlight = chat(app, long);
    await until(() => (app.modelRegistry.snapshot()[0]?.runningRows ?? 0) === 1);
    const second = await saveActor(20, 42);
    await until(() => app.modelRegistry.stats.switches === 1, 5000); // the poll found and loaded it
    expect(await listed(app, actorId)).toMatchObject({ root: second, step: 20, final: false });
    const onSecond = (await chat(app, ask)).json().choices[0].message.content;
    expect(onSecond).not.toBe(onFirst);
    // The request that started on the first weights finishes on them; then they are freed.
    const finished = (await inFlight).json();
    expect(finished.usage.completion_tokens).toBe(80);
    expect(finished.choices[0].message.content).toBe(longOnFirst);
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(app.modelRegistry.snapshot().map((m) => m.checkpointId)).toEqual([second]);
    const oneModel = tf.memory().numTensors;

    // Once loaded, the name is answered from memory (the poll keeps it current), no query.
    expect(app.modelRegistry.servedNow(actorId)?.checkpointId).toBe(second);
    const last = await saveActor(30, 43, true);
    await until(() => app.modelRegistry.stats.switches === 2, 5000);
    expect(await listed(app, actorId)).toMatchObject({ root: last, step: 30, final: true });
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(tf.memory().numTensors).toBe(oneModel); // the replaced weights were disposed
  });
});

// Which checkpoints of a full RLHF run the inference service serves: the PPO actor as
// `run-<id>`, its EMA copy as `run-<id>-ema` and the SFT model as `run-<id>-sft`; the reward
// model and the critic (value models, with `v_head.weight`) never.
import { loadConfig } from "@chatrl/contracts";
import { createRun, saveCheckpoint, saveCheckpoints } from "@chatrl/db";
import {
  autoDecodeDtype,
  ByteTokenizer,
  DecodeBatch,
  type DecodeDtype,
  chatStopStrings,
  decodeSafetensors,
  encodePrompt,
  encodeSafetensors,
  GPT,
  generate,
  MODEL_PRESETS,
  saveModel,
  servingTokenRules,
} from "@chatrl/engine";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { buildInferenceApp } from "../src/app.ts";

const tiny = MODEL_PRESETS.tiny;
const SEEDS = { sft: 21, actor: 22, ema: 23 } as const;

let testDb: TestDatabase;
let app: FastifyInstance;
let runId: string;
let ppoStageId: string;
const checkpointOf: Record<string, string> = {};

async function policyFile(seed: number): Promise<Uint8Array> {
  const model = new GPT(tiny, seed);
  try {
    return await saveModel(model);
  } finally {
    model.dispose();
  }
}

/** A value model's file as the engine writes one: a GPT body plus `v_head.weight` [d_model, 1]. */
async function valueFile(seed: number): Promise<Uint8Array> {
  const { tensors, metadata } = decodeSafetensors(await policyFile(seed));
  const head = new Float32Array(tiny.dModel).map((_, i) => Math.sin(i + seed) * 0.02);
  tensors.set("v_head.weight", { dtype: "float32", shape: [tiny.dModel, 1], data: head });
  return encodeSafetensors(tensors, metadata);
}

const QUESTION = "What is 2 plus 3?";
const SAMPLING = { maxTokens: 16, temperature: 1, topP: 1, seed: 7 };

/**
 * What the model initialized from `weightsSeed` samples for QUESTION, straight from the engine.
 * Sampled, not greedy: untrained tiny models all answer newlines under argmax.
 */
async function engineReply(weightsSeed: number): Promise<string> {
  const model = new GPT(tiny, weightsSeed);
  try {
    const tokenizer = new ByteTokenizer();
    const [result] = await generate(model, tokenizer, [[{ role: "user", content: QUESTION }]], {
      ...SAMPLING,
      stop: chatStopStrings(tokenizer),
      dtype: autoDecodeDtype(), // as the service serves it
    });
    return result.text;
  } finally {
    model.dispose();
  }
}

/** The same question and sampling through the service (a seeded request runs alone). */
function chat(model: string) {
  return app.inject({
    method: "POST",
    url: "/v1/chat/completions",
    payload: {
      model,
      messages: [{ role: "user", content: QUESTION }],
      max_tokens: SAMPLING.maxTokens,
      temperature: SAMPLING.temperature,
      top_p: SAMPLING.topP,
      seed: SAMPLING.seed,
    },
  });
}

beforeAll(async () => {
  testDb = await createTestDatabase();
  const prisma = testDb.db.prisma;
  const run = await createRun(prisma, {
    name: "three stages",
    spec: {},
    stages: [
      { kind: "sft", maxSteps: 10 },
      { kind: "reward", maxSteps: 10 },
      { kind: "ppo", maxSteps: 5 },
    ],
  });
  runId = run.id;
  const [sft, reward, ppo] = run.stages;
  ppoStageId = ppo.id;
  const save = (stageId: string, role: "sft" | "reward", model: Uint8Array) =>
    saveCheckpoint(prisma, { runId, stageId, step: 10, role, final: true, config: tiny, model });
  checkpointOf.sft = (await save(sft.id, "sft", await policyFile(SEEDS.sft))).id;
  checkpointOf.reward = (await save(reward.id, "reward", await valueFile(31))).id;
  // PPO's final checkpoint: actor, critic and EMA saved together, as the worker saves them.
  const rows = await saveCheckpoints(prisma, {
    runId,
    stageId: ppo.id,
    step: 5,
    final: true,
    files: [
      { role: "actor", config: tiny, model: await policyFile(SEEDS.actor) },
      { role: "critic", config: tiny, model: await valueFile(32) },
      { role: "ema", config: tiny, model: await policyFile(SEEDS.ema) },
    ],
  });
  for (const row of rows) checkpointOf[row.role] = row.id;

  app = await buildInferenceApp(loadConfig({ CHATRL_LOG_LEVEL: "silent" }), { db: testDb.db });
});

afterAll(async () => {
  await app?.close();
  await testDb?.drop();
});

describe("models of a three-stage run", () => {
  it("lists the actor, its EMA copy and the SFT model, each naming its checkpoint, and no value model", async () => {
    const res = await app.inject({ method: "GET", url: "/v1/models" });
    expect(res.statusCode).toBe(200);
    const models = res.json().data as { id: string; root: string; object: string }[];
    const ours = models.filter((m) => m.id.startsWith(`run-${runId}`));
    expect(Object.fromEntries(ours.map((m) => [m.id, m.root]))).toEqual({
      [`run-${runId}`]: checkpointOf.actor,
      [`run-${runId}-ema`]: checkpointOf.ema,
      [`run-${runId}-sft`]: checkpointOf.sft,
    });
    for (const m of ours) expect(m.object).toBe("model");
    const roots = models.map((m) => m.root);
    expect(roots).not.toContain(checkpointOf.critic);
    expect(roots).not.toContain(checkpointOf.reward);
  });

  it("answers with the actor's weights for run-<id> and the EMA's for run-<id>-ema", async () => {
    const names = {
      actor: `run-${runId}`,
      ema: `run-${runId}-ema`,
      sft: `run-${runId}-sft`,
    } as const;
    const expected = {
      actor: await engineReply(SEEDS.actor),
      ema: await engineReply(SEEDS.ema),
      sft: await engineReply(SEEDS.sft),
    };
    // Three differently initialized models: the replies tell them apart.
    expect(new Set(Object.values(expected)).size).toBe(3);
    for (const role of ["actor", "ema", "sft"] as const) {
      const res = await chat(names[role]);
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json().model).toBe(names[role]);
      expect(res.json().choices[0].message.content, role).toBe(expected[role]);
    }
  });

  it("serves in the dtype it is configured with: float32 gives the engine's float32 log-probs, bfloat16 its bfloat16 ones", async () => {
    const messages = [{ role: "user" as const, content: QUESTION }];
    /** The engine's log-probs of the SFT model's first 4 greedy tokens (no stop before), in `dtype`. */
    async function engineLogprobs(dtype: DecodeDtype): Promise<number[]> {
      const model = new GPT(tiny, SEEDS.sft);
      const batch = new DecodeBatch(model, { dtype });
      try {
        const tokenizer = new ByteTokenizer();
        const rules = servingTokenRules(tokenizer, tiny.vocabSize);
        const options = {
          maxNewTokens: 4,
          temperature: 0,
          topP: 1,
          seed: 0,
          minNewTokens: 4,
          stopIds: rules.stop,
          suppressIds: rules.suppress,
          logprobs: 0,
        };
        const [[row]] = await batch.add([
          { prompt: encodePrompt(tokenizer, messages), rows: [options] },
        ]);
        while (batch.size > 0) await batch.step();
        return row.logprobs.map((lp) => lp.logprob);
      } finally {
        batch.dispose();
        model.dispose();
      }
    }
    const served = async (dtype: DecodeDtype) => {
      const server = await buildInferenceApp(loadConfig({ CHATRL_LOG_LEVEL: "silent" }), {
        db: testDb.db,
        registry: { dtype },
      });
      try {
        const res = await server.inject({
          method: "POST",
          url: "/v1/chat/completions",
          payload: {
            model: `run-${runId}-sft`,
            messages,
            max_tokens: 4,
            min_tokens: 4,
            temperature: 0,
            logprobs: true,
          },
        });
        expect(res.statusCode, res.body).toBe(200);
        expect(server.modelRegistry.snapshot().map((m) => m.dtype)).toEqual([dtype]);
        return (res.json().choices[0].logprobs.content as { logprob: number }[]).map(
          (c) => c.logprob,
        );
      } finally {
        await server.close();
      }
    };
    const float32 = await engineLogprobs("float32");
    const bfloat16 = await engineLogprobs("bfloat16");
    expect(await served("float32")).toEqual(float32);
    expect(await served("bfloat16")).toEqual(bfloat16);
    // The two precisions do differ, by about bfloat16's rounding.
    const gap = Math.max(...float32.map((x, i) => Math.abs(x - bfloat16[i])));
    expect(gap).toBeGreaterThan(0);
    expect(gap).toBeLessThan(0.05);
  });

  it("refuses to serve the critic or the reward model under any name", async () => {
    for (const name of [`run-${runId}-critic`, `run-${runId}-reward`, checkpointOf.critic]) {
      const res = await chat(name);
      expect(res.statusCode).toBe(404);
      expect(res.json().error.code).toBe("model_not_found");
    }
  });

  it("serves a run's newer actor once its checkpoint, loaded in the background, is ready", async () => {
    const newer = await saveCheckpoint(testDb.db.prisma, {
      runId,
      stageId: ppoStageId,
      step: 5,
      role: "actor",
      final: true,
      config: tiny,
      model: await policyFile(SEEDS.sft),
    });
    const listedActor = async () => {
      const res = await app.inject({ method: "GET", url: "/v1/models" });
      return res.json().data.find((m: { id: string }) => m.id === `run-${runId}`);
    };
    // The loaded actor answers, and the list says so, until the newer one has loaded.
    expect((await listedActor()).root).not.toBe(newer.id);
    await app.modelRegistry.refresh();
    await app.modelRegistry.settled();
    expect((await listedActor()).root).toBe(newer.id);
    const reply = await chat(`run-${runId}`);
    expect(reply.json().choices[0].message.content).toBe(await engineReply(SEEDS.sft));
  });
});

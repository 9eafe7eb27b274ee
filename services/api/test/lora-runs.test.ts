// POST /v1/runs with LoRA settings (DeepSpeed-Chat's lora_dim, lora_module_name,
// only_optimize_lora, lora_learning_rate and PPO's actor_ / critic_ forms): stored with their
// defaults, and refused (422 naming the field) when they cannot apply to the stage's model.
import { normalizeRunSpec, type RunCreateRequest } from "@chatrl/contracts";
import { createRun } from "@chatrl/db";
import { MODEL_PRESETS } from "@chatrl/engine/config";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  earlierRun,
  startTestApi,
  type TestApi,
  uploadRlhfDatasets,
  waitForJobs,
} from "./helpers.ts";

let api: TestApi;
let supervisedId: string; // 8 supervised rows
let preferenceId: string; // 8 preference rows
let sftCheckpoint: string; // role sft: the small preset's shape (4 layers, d_model 256)
let rewardCheckpoint: string; // role reward: 3 layers, d_model 32
let bareCheckpoint: string; // role reward, a config giving only its context

beforeAll(async () => {
  api = await startTestApi();
  ({ supervisedId, preferenceId } = await uploadRlhfDatasets(api.app, 8));
  const save = await earlierRun(api.database.db.prisma);
  // Checkpoint configs as the worker saves them: the model's whole ModelConfig.
  sftCheckpoint = await save(0, "sft", MODEL_PRESETS.small);
  rewardCheckpoint = await save(1, "reward", { ...MODEL_PRESETS.tiny, nLayers: 3, dModel: 32 });
  bareCheckpoint = await save(1, "reward", { contextLength: 256 });
});
afterAll(async () => {
  await api?.close();
});

/** Supervised rows feed sft, preference rows reward and ppo; the model is tiny (2 layers, d 64). */
function body(stages: object, extra: Record<string, unknown> = {}): RunCreateRequest {
  return {
    name: "lora",
    model: { preset: "tiny" },
    datasets: [
      ...("sft" in stages ? [{ id: supervisedId, stages: ["sft" as const] }] : []),
      ...("reward" in stages || "ppo" in stages
        ? [{ id: preferenceId, stages: ["reward" as const, "ppo" as const] }]
        : []),
    ],
    stages,
    ...extra,
  } as RunCreateRequest;
}

async function postRun(payload: unknown, headers: Record<string, string> = {}) {
  const response = await api.app.inject({
    method: "POST",
    url: "/v1/runs",
    payload: payload as object,
    headers,
  });
  if (response.statusCode === 201) await waitForJobs(api.queues, response.json());
  return response;
}

async function storedSpec(runId: string) {
  const run = await api.database.db.prisma.run.findUniqueOrThrow({ where: { id: runId } });
  return run.spec as { stages: Record<string, Record<string, unknown>> };
}

/** A refused run: the status, the param the error names, and no run stored. */
async function expectRefused(payload: unknown, status: number, param: string, message: RegExp) {
  const prisma = api.database.db.prisma;
  const runsBefore = await prisma.run.count();
  const response = await postRun(payload);
  expect(response.statusCode, response.body).toBe(status);
  expect(response.json().error.param).toBe(param);
  expect(response.json().error.message).toMatch(message);
  expect(await prisma.run.count()).toBe(runsBefore);
}

const NO_LORA = {
  lora_dim: 0,
  lora_module_name: "h.",
  only_optimize_lora: false,
  lora_learning_rate: 5e-4,
};

describe("LoRA settings", () => {
  it("stores the LoRA settings a run gives, and the retry with its Idempotency-Key is the same run", async () => {
    const sft = {
      lora_dim: 8,
      lora_module_name: "attn.",
      only_optimize_lora: true,
      lora_learning_rate: 1e-3,
    };
    const reward = { lora_dim: 4, lora_module_name: "h.1.mlp" };
    const ppo = {
      actor_lora_dim: 16,
      actor_lora_module_name: "mlp.c_fc",
      critic_lora_dim: 2,
      critic_lora_module_name: "c_proj",
      only_optimize_lora: true,
      actor_lora_learning_rate: 2e-4,
      critic_lora_learning_rate: 3e-4,
    };
    const payload = body({ sft, reward, ppo });
    const headers = { "idempotency-key": "lora-retry" };
    const response = await postRun(payload, headers);
    expect(response.statusCode, response.body).toBe(201);
    const spec = await storedSpec(response.json().id);
    expect(spec.stages.sft).toMatchObject(sft);
    expect(spec.stages.reward).toMatchObject({ ...reward, only_optimize_lora: false });
    expect(spec.stages.reward.lora_learning_rate).toBe(5e-4);
    expect(spec.stages.ppo).toMatchObject(ppo);

    const again = await postRun(payload, headers);
    expect(again.statusCode, again.body).toBe(200);
    expect(again.json().id).toBe(response.json().id);
  });

  it("stores the defaults, no LoRA, for a run that gives none", async () => {
    const response = await postRun(body({ sft: {}, reward: {}, ppo: {} }));
    expect(response.statusCode, response.body).toBe(201);
    const spec = await storedSpec(response.json().id);
    expect(spec.stages.sft).toMatchObject(NO_LORA);
    expect(spec.stages.reward).toMatchObject(NO_LORA);
    expect(spec.stages.ppo).toMatchObject({
      actor_lora_dim: 0,
      actor_lora_module_name: "h.",
      critic_lora_dim: 0,
      critic_lora_module_name: "h.",
      only_optimize_lora: false,
      actor_lora_learning_rate: 5e-4,
      critic_lora_learning_rate: 5e-4,
    });
  });

  it("takes a retry of a run stored before the LoRA settings as the same run", async () => {
    const payload = body({ sft: { max_steps: 3 } }, { datasets: [{ id: supervisedId }] });
    const { lora_dim, lora_module_name, only_optimize_lora, lora_learning_rate, ...oldSft } =
      normalizeRunSpec(payload).stages.sft ?? {};
    const old = await createRun(api.database.db.prisma, {
      name: payload.name,
      spec: { ...normalizeRunSpec(payload), stages: { sft: oldSft } },
      idempotencyKey: "stored-before-lora",
      stages: [{ kind: "sft", maxSteps: 3 }],
    });
    const retry = await postRun(payload, { "idempotency-key": "stored-before-lora" });
    expect(retry.statusCode, retry.body).toBe(200);
    expect(retry.json().id).toBe(old.id);
  });

  it("refuses values out of the schema's range with 400 naming the field", async () => {
    await expectRefused(body({ sft: { lora_dim: -1 } }), 400, "stages.sft.lora_dim", />= 0/);
    await expectRefused(
      body({ reward: { lora_dim: 1025 } }),
      400,
      "stages.reward.lora_dim",
      /<= 1024/,
    );
    await expectRefused(
      body({ sft: { lora_module_name: "" } }),
      400,
      "stages.sft.lora_module_name",
      /fewer than 1/,
    );
    await expectRefused(
      body({ sft: {}, reward: {}, ppo: { critic_lora_learning_rate: 0 } }),
      400,
      "stages.ppo.critic_lora_learning_rate",
      /> 0/,
    );
    await expectRefused(
      body({ sft: {}, reward: {}, ppo: { lora_dim: 8 } }),
      400,
      "stages.ppo.lora_dim",
      /Unknown field/,
    );
  });

  it("refuses only_optimize_lora without adapters to train (422)", async () => {
    await expectRefused(
      body({ sft: { only_optimize_lora: true } }),
      422,
      "stages.sft.only_optimize_lora",
      /only_optimize_lora needs lora_dim > 0/,
    );
    await expectRefused(
      body({ reward: { only_optimize_lora: true, lora_module_name: "attn." } }),
      422,
      "stages.reward.only_optimize_lora",
      /only_optimize_lora needs lora_dim > 0/,
    );
    await expectRefused(
      body({ sft: {}, reward: {}, ppo: { only_optimize_lora: true } }),
      422,
      "stages.ppo.only_optimize_lora",
      /only_optimize_lora needs lora_dim > 0 for the actor or the critic/,
    );
    // Adapters on one of PPO's models are enough (the other trains all its weights).
    const actorOnly = await postRun(
      body({ sft: {}, reward: {}, ppo: { only_optimize_lora: true, actor_lora_dim: 8 } }),
    );
    expect(actorOnly.statusCode, actorOnly.body).toBe(201);
  });

  it("refuses a lora_module_name that selects no projection of the stage's model (422)", async () => {
    await expectRefused(
      body({ sft: { lora_dim: 8, lora_module_name: "decoder.layers." } }),
      422,
      "stages.sft.lora_module_name",
      /'decoder\.layers\.' selects no projection of the model \(2 layers\).*h\.0\.attn\.c_attn/,
    );
    // Without adapters the name selects nothing anyway: not checked.
    const off = await postRun(body({ sft: { lora_module_name: "decoder.layers." } }));
    expect(off.statusCode, off.body).toBe(201);
    // The reward model is its own: the small preset's 4 layers have an h.3 and no h.4.
    await expectRefused(
      body({ reward: { model: { preset: "small" }, lora_dim: 8, lora_module_name: "h.4." } }),
      422,
      "stages.reward.lora_module_name",
      /'h\.4\.' selects no projection of the reward model \(4 layers\)/,
    );
    const small = await postRun(
      body({ reward: { model: { preset: "small" }, lora_dim: 8, lora_module_name: "h.3." } }),
    );
    expect(small.statusCode, small.body).toBe(201);
    // The actor is the sft stage's model (tiny, 2 layers) or sft_checkpoint_id's (4 layers); the
    // critic the reward model or reward_checkpoint_id's (3 layers).
    await expectRefused(
      body({ sft: {}, reward: {}, ppo: { actor_lora_dim: 8, actor_lora_module_name: "h.3." } }),
      422,
      "stages.ppo.actor_lora_module_name",
      /selects no projection of the actor \(2 layers\)/,
    );
    const ppoAlone = (ppo: object) =>
      body({
        ppo: { sft_checkpoint_id: sftCheckpoint, reward_checkpoint_id: rewardCheckpoint, ...ppo },
      });
    const fromCheckpoints = await postRun(
      ppoAlone({ actor_lora_dim: 8, actor_lora_module_name: "h.3.", critic_lora_dim: 8 }),
    );
    expect(fromCheckpoints.statusCode, fromCheckpoints.body).toBe(201);
    await expectRefused(
      ppoAlone({ critic_lora_dim: 8, critic_lora_module_name: "h.3." }),
      422,
      "stages.ppo.critic_lora_module_name",
      /selects no projection of the critic \(3 layers\)/,
    );
  });

  it("refuses a lora_dim larger than the model's width (422)", async () => {
    await expectRefused(
      body({ sft: { lora_dim: 65 } }),
      422,
      "stages.sft.lora_dim",
      /stages\.sft\.lora_dim 65 is larger than the width \(d_model\) of the model, 64/,
    );
    const full = await postRun(body({ sft: { lora_dim: 64 } }));
    expect(full.statusCode, full.body).toBe(201);
    await expectRefused(
      body({ reward: { model: { preset: "small" }, lora_dim: 257 } }),
      422,
      "stages.reward.lora_dim",
      /the reward model, 256/,
    );
    await expectRefused(
      body({
        ppo: {
          sft_checkpoint_id: sftCheckpoint,
          reward_checkpoint_id: rewardCheckpoint,
          actor_lora_dim: 128,
          critic_lora_dim: 48,
        },
      }),
      422,
      "stages.ppo.critic_lora_dim",
      /critic_lora_dim 48 is larger than the width \(d_model\) of the critic, 32/,
    );
  });

  it("does not check the shape of a checkpoint whose config does not give it", async () => {
    const response = await postRun(
      body({
        ppo: {
          sft_checkpoint_id: sftCheckpoint,
          reward_checkpoint_id: bareCheckpoint,
          critic_lora_dim: 1024,
          critic_lora_module_name: "h.99.",
        },
      }),
    );
    expect(response.statusCode, response.body).toBe(201);
  });
});

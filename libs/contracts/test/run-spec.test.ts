import { describe, expect, it } from "vitest";
import { loraTargetNames } from "../src/lora.ts";
import { openApiDocument } from "../src/openapi.ts";
import {
  datasetSplit,
  LORA_DEFAULTS,
  normalizeRunSpec,
  PPO_DEFAULTS,
  REWARD_DEFAULTS,
  type RunCreateRequest,
  type RunSpec,
  readRunSpec,
  SFT_DEFAULTS,
  splitRowCounts,
  trainedStages,
} from "../src/run-spec.ts";

const datasetId = `ds_${"a".repeat(24)}`;
const base = { name: "r", model: { preset: "tiny" as const }, datasets: [{ id: datasetId }] };

describe("normalizeRunSpec", () => {
  it("fills every documented default and trains sft alone when the body names no stage", () => {
    const expected: RunSpec = {
      name: "r",
      model: { preset: "tiny" },
      datasets: [{ id: datasetId, weight: 1, stages: ["sft", "reward", "ppo"] }],
      data_split: [2, 4, 4],
      stages: {
        sft: {
          batch_size: 8,
          learning_rate: 1e-3,
          max_seq_len: 128,
          epochs: 1,
          checkpoint_every: 25,
          warmup_steps: 10,
          weight_decay: 0.01,
          grad_clip: 1.0,
          lora_dim: 0,
          lora_module_name: "h.",
          only_optimize_lora: false,
          lora_learning_rate: 5e-4,
        },
      },
      compute: { device: "cpu", price_per_hour: 0 },
      seed: 42,
    };
    expect(normalizeRunSpec(base)).toEqual(expected);
    expect(normalizeRunSpec({ ...base, stages: {} })).toEqual(expected);
  });

  it("leaves max_steps out unless given, so epochs decide", () => {
    expect(normalizeRunSpec(base).stages.sft).not.toHaveProperty("max_steps");
    const spec = normalizeRunSpec({ ...base, stages: { sft: { max_steps: 150 } } });
    expect(spec.stages.sft?.max_steps).toBe(150);
  });

  it("keeps what the request gave and defaults only the rest", () => {
    const spec = normalizeRunSpec({
      name: "r",
      model: { checkpoint_id: `ckpt_${"b".repeat(24)}` },
      datasets: [{ id: datasetId, weight: 3, stages: ["ppo", "sft"] }],
      data_split: [10, 0, 0],
      stages: { sft: { max_steps: 7, learning_rate: 0.01 } },
      compute: { price_per_hour: 2.5 },
      seed: 0,
    });
    expect(spec.model).toEqual({ checkpoint_id: `ckpt_${"b".repeat(24)}` });
    // Stored in pipeline order: the same set listed differently is the same spec.
    expect(spec.datasets).toEqual([{ id: datasetId, weight: 3, stages: ["sft", "ppo"] }]);
    expect(spec.data_split).toEqual([10, 0, 0]);
    expect(spec.stages.sft).toMatchObject({ max_steps: 7, learning_rate: 0.01, batch_size: 8 });
    expect(spec.compute).toEqual({ device: "cpu", price_per_hour: 2.5 });
    expect(spec.seed).toBe(0);
  });

  it("trains exactly the stages the body names, each with its own defaults", () => {
    const spec = normalizeRunSpec({ ...base, stages: { reward: {}, ppo: { kl_ctl: 0.05 } } });
    expect(trainedStages(spec)).toEqual(["reward", "ppo"]);
    expect(spec.stages.sft).toBeUndefined();
    expect(spec.stages.reward).toEqual(REWARD_DEFAULTS);
    expect(spec.stages.ppo).toEqual({ ...PPO_DEFAULTS, kl_ctl: 0.05 });
    expect(REWARD_DEFAULTS).toMatchObject({ learning_rate: 5e-5, eval_fraction: 0.1 });
    expect(PPO_DEFAULTS).toMatchObject({
      actor_learning_rate: 9.65e-6,
      critic_learning_rate: 5e-6,
      kl_ctl: 0.1,
      clip_reward_value: 5,
      cliprange: 0.2,
      cliprange_value: 0.2,
      gamma: 1,
      lam: 0.95,
      ema_beta: 0.992,
      unsup_coef: 27.8,
      max_prompt_seq_len: 256,
      max_answer_seq_len: 256,
      actor_lora_dim: 0,
      actor_lora_module_name: "h.",
      critic_lora_dim: 0,
      critic_lora_module_name: "h.",
      only_optimize_lora: false,
      actor_lora_learning_rate: 5e-4,
      critic_lora_learning_rate: 5e-4,
    });
    expect(REWARD_DEFAULTS).toMatchObject(LORA_DEFAULTS);
    expect(SFT_DEFAULTS).not.toHaveProperty("max_steps");
    expect(spec.stages.ppo).not.toHaveProperty("adaptive_kl");
  });

  it("fits PPO's default sequence lengths into half the context, and keeps given ones", () => {
    const ppo = (given: object, ppoContextLength?: number) =>
      normalizeRunSpec({ ...base, stages: { ppo: given } }, { ppoContextLength }).stages.ppo;
    expect(ppo({}, 128)).toMatchObject({ max_prompt_seq_len: 64, max_answer_seq_len: 64 });
    expect(ppo({}, 1024)).toMatchObject({ max_prompt_seq_len: 256, max_answer_seq_len: 256 });
    expect(ppo({}, 129)).toMatchObject({ max_prompt_seq_len: 64, max_answer_seq_len: 64 });
    expect(ppo({ max_answer_seq_len: 30 }, 128)).toMatchObject({
      max_prompt_seq_len: 64,
      max_answer_seq_len: 30,
    });
  });

  it("stores a reward model source as the run's model is stored", () => {
    const spec = normalizeRunSpec({ ...base, stages: { reward: { model: { preset: "small" } } } });
    expect(spec.stages.reward?.model).toEqual({ preset: "small" });
  });
});

describe("the defaults", () => {
  it("are the ones openapi.yaml states, setting for setting", () => {
    type Schema = { properties: Record<string, { default?: unknown }> };
    const schemas = openApiDocument.components.schemas as Record<string, Schema>;
    const stated = (name: string) =>
      Object.fromEntries(
        Object.entries(schemas[name].properties)
          .filter(([, property]) => property.default !== undefined)
          .map(([key, property]) => [key, property.default]),
      );
    expect(stated("SftHyperparameters")).toEqual(SFT_DEFAULTS);
    expect(stated("RewardHyperparameters")).toEqual(REWARD_DEFAULTS);
    // PPO's sequence lengths depend on the models' context (normalizeRunSpec), so none is stated.
    const { max_prompt_seq_len, max_answer_seq_len, ...ppo } = PPO_DEFAULTS;
    expect(stated("PpoHyperparameters")).toEqual(ppo);
  });

  it("are read into a stored spec that predates a setting, under what it stored", () => {
    const spec = normalizeRunSpec({ ...base, stages: { sft: {}, reward: {}, ppo: {} } });
    const { lora_dim, lora_module_name, only_optimize_lora, lora_learning_rate, ...oldSft } =
      spec.stages.sft ?? SFT_DEFAULTS;
    const { actor_lora_dim, critic_lora_dim, ...oldPpo } = spec.stages.ppo ?? PPO_DEFAULTS;
    const stored = JSON.parse(
      JSON.stringify({
        ...spec,
        stages: { sft: { ...oldSft, max_steps: 9 }, reward: spec.stages.reward, ppo: oldPpo },
      }),
    );
    const read = readRunSpec(stored);
    expect(read.stages.sft).toEqual({ ...spec.stages.sft, max_steps: 9 });
    expect(read.stages.reward).toEqual(spec.stages.reward);
    expect(read.stages.ppo).toEqual(spec.stages.ppo);
    expect(read.stages.sft?.lora_dim).toBe(0);
    expect(readRunSpec({ ...stored, stages: { reward: { lora_dim: 4 } } }).stages).toEqual({
      reward: { ...REWARD_DEFAULTS, lora_dim: 4 },
    });
  });
});

describe("loraTargetNames", () => {
  it("lists the projections whose name contains the module name, in layer order", () => {
    expect(loraTargetNames(2, "h.")).toEqual([
      "h.0.attn.c_attn",
      "h.0.attn.c_proj",
      "h.0.mlp.c_fc",
      "h.0.mlp.c_proj",
      "h.1.attn.c_attn",
      "h.1.attn.c_proj",
      "h.1.mlp.c_fc",
      "h.1.mlp.c_proj",
    ]);
    expect(loraTargetNames(2, "attn.")).toEqual([
      "h.0.attn.c_attn",
      "h.0.attn.c_proj",
      "h.1.attn.c_attn",
      "h.1.attn.c_proj",
    ]);
    expect(loraTargetNames(2, "h.1.mlp")).toEqual(["h.1.mlp.c_fc", "h.1.mlp.c_proj"]);
    expect(loraTargetNames(4, "c_proj")).toHaveLength(8);
    // A plain substring: "h.1" is also the start of "h.10", "h.11", ...
    expect(loraTargetNames(12, "h.1.")).toHaveLength(4);
    expect(loraTargetNames(12, "h.1")).toHaveLength(12);
  });

  it("selects nothing for OPT's names, a layer past the last, or no layers", () => {
    expect(loraTargetNames(2, "decoder.layers.")).toEqual([]);
    expect(loraTargetNames(2, "h.2.")).toEqual([]);
    expect(loraTargetNames(0, "h.")).toEqual([]);
  });
});

describe("the data routing rule", () => {
  type DatasetStages = RunCreateRequest["datasets"][number]["stages"];
  const spec = (stages: object, datasetStages?: DatasetStages) =>
    normalizeRunSpec({
      ...base,
      datasets: [{ id: datasetId, ...(datasetStages ? { stages: datasetStages } : {}) }],
      stages,
    });

  it("gives a dataset's rows only to the stages it feeds that the run trains", () => {
    expect(datasetSplit(spec({}), 0)).toEqual([2, 0, 0]);
    expect(datasetSplit(spec({ sft: {}, reward: {} }), 0)).toEqual([2, 4, 0]);
    expect(datasetSplit(spec({ sft: {}, reward: {}, ppo: {} }), 0)).toEqual([2, 4, 4]);
    expect(datasetSplit(spec({ sft: {}, reward: {}, ppo: {} }, ["sft"]), 0)).toEqual([2, 0, 0]);
    expect(datasetSplit(spec({ reward: {} }, ["sft", "ppo"]), 0)).toEqual([0, 0, 0]);
    expect(() => datasetSplit(spec({}), 1)).toThrow(RangeError);
  });

  it("counts rows per stage as the engine's splitForStage cuts them", () => {
    expect(splitRowCounts(10, [2, 4, 4])).toEqual([2, 4, 4]);
    expect(splitRowCounts(2, [2, 4, 4])).toEqual([0, 1, 1]); // bounds 0, round(0.4)=0, round(1.2)=1, 2
    expect(splitRowCounts(7, [1, 0, 1])).toEqual([4, 0, 3]); // round(3.5)=4
    expect(splitRowCounts(5, [0, 0, 0])).toEqual([0, 0, 0]);
    expect(splitRowCounts(5, [2, 0, 0])).toEqual([5, 0, 0]);
  });
});

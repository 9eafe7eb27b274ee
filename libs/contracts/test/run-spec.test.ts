import { describe, expect, it } from "vitest";
import {
  datasetSplit,
  normalizeRunSpec,
  PPO_DEFAULTS,
  REWARD_DEFAULTS,
  type RunCreateRequest,
  type RunSpec,
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
    });
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

import { describe, expect, it } from "vitest";
import { normalizeRunSpec } from "../src/run-spec.ts";

const datasetId = `ds_${"a".repeat(24)}`;

describe("normalizeRunSpec", () => {
  it("fills every documented default", () => {
    expect(
      normalizeRunSpec({ name: "r", model: { preset: "tiny" }, datasets: [{ id: datasetId }] }),
    ).toEqual({
      name: "r",
      model: { preset: "tiny" },
      datasets: [{ id: datasetId, weight: 1 }],
      data_split: [2, 4, 4],
      stages: {
        sft: {
          max_steps: 100,
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
    });
  });

  it("keeps what the request gave and defaults only the rest", () => {
    const spec = normalizeRunSpec({
      name: "r",
      model: { checkpoint_id: `ckpt_${"b".repeat(24)}` },
      datasets: [{ id: datasetId, weight: 3 }],
      data_split: [10, 0, 0],
      stages: { sft: { max_steps: 7, learning_rate: 0.01 } },
      compute: { price_per_hour: 2.5 },
      seed: 0,
    });
    expect(spec.model).toEqual({ checkpoint_id: `ckpt_${"b".repeat(24)}` });
    expect(spec.datasets).toEqual([{ id: datasetId, weight: 3 }]);
    expect(spec.data_split).toEqual([10, 0, 0]);
    expect(spec.stages.sft).toMatchObject({ max_steps: 7, learning_rate: 0.01, batch_size: 8 });
    expect(spec.compute).toEqual({ device: "cpu", price_per_hour: 2.5 });
    expect(spec.seed).toBe(0);
  });
});

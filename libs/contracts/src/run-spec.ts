import type { components } from "./generated/openapi.ts";

export type RunCreateRequest = components["schemas"]["RunCreateRequest"];

export type SftHyperparameters = {
  max_steps: number;
  batch_size: number;
  learning_rate: number;
  max_seq_len: number;
  epochs: number;
  checkpoint_every: number;
  warmup_steps: number;
  weight_decay: number;
  grad_clip: number;
};

/** The stored form of a run: the request body with every default applied. */
export type RunSpec = {
  name: string;
  model: { preset: "tiny" | "small" } | { checkpoint_id: string };
  datasets: { id: string; weight: number }[];
  data_split: [number, number, number];
  stages: { sft: SftHyperparameters };
  compute: { device: string; price_per_hour: number };
  seed: number;
};

// The same defaults as openapi.yaml states; normalizeRunSpec does not rely on Ajv's useDefaults.
export const SFT_DEFAULTS: SftHyperparameters = {
  max_steps: 100,
  batch_size: 8,
  learning_rate: 1e-3,
  max_seq_len: 128,
  epochs: 1,
  checkpoint_every: 25,
  warmup_steps: 10,
  weight_decay: 0.01,
  grad_clip: 1.0,
};

/**
 * Applies defaults to a schema-validated run request. Reward and PPO settings are not part of
 * a RunSpec yet: the api refuses runs that ask for those stages before calling this.
 */
export function normalizeRunSpec(body: RunCreateRequest): RunSpec {
  const model =
    body.model.checkpoint_id !== undefined
      ? { checkpoint_id: body.model.checkpoint_id }
      : { preset: body.model.preset ?? "tiny" };
  const [sft = 2, reward = 4, ppo = 4] = body.data_split ?? [];
  return {
    name: body.name,
    model,
    datasets: body.datasets.map((d) => ({ id: d.id, weight: d.weight ?? 1 })),
    data_split: [sft, reward, ppo],
    stages: { sft: { ...SFT_DEFAULTS, ...body.stages?.sft } },
    compute: {
      device: body.compute?.device ?? "cpu",
      price_per_hour: body.compute?.price_per_hour ?? 0,
    },
    seed: body.seed ?? 42,
  };
}

import type { components } from "./generated/openapi.ts";
import type { DatasetFormat } from "./rows.ts";

export type RunCreateRequest = components["schemas"]["RunCreateRequest"];

export type StageName = "sft" | "reward" | "ppo";

/** The order of stages in data_split and in a run. */
export const STAGE_ORDER: readonly StageName[] = ["sft", "reward", "ppo"];

export type ModelSpec = { preset: "tiny" | "small" } | { checkpoint_id: string };

/**
 * Settings every trainer shares. max_steps as Hugging Face's Trainer reads it: when given it is
 * the number of optimizer steps (the data repeats as needed); when absent, `epochs` passes over
 * the stage's data decide.
 */
type CommonHyperparameters = {
  max_steps?: number;
  epochs: number;
  checkpoint_every: number;
  grad_clip: number;
};

/**
 * DeepSpeed-Chat's LoRA arguments of steps 1 and 2, under its names. Adapters of rank lora_dim
 * go on the projections whose names contain lora_module_name (loraTargetNames); lora_dim 0
 * trains without them.
 */
export type LoraHyperparameters = {
  lora_dim: number;
  lora_module_name: string;
  /** Train only the adapters (base weights frozen); needs lora_dim > 0. */
  only_optimize_lora: boolean;
  /** The adapters' peak learning rate; the schedule scales it like the stage's learning_rate. */
  lora_learning_rate: number;
};

export type SftHyperparameters = CommonHyperparameters &
  LoraHyperparameters & {
    batch_size: number;
    learning_rate: number;
    max_seq_len: number;
    warmup_steps: number;
    weight_decay: number;
  };

export type RewardHyperparameters = CommonHyperparameters &
  LoraHyperparameters & {
    /** The reward model's starting weights; default: the run's model. */
    model?: ModelSpec;
    batch_size: number;
    learning_rate: number;
    max_seq_len: number;
    warmup_steps: number;
    weight_decay: number;
    /** Share of the stage's pairs held out for accuracy (never trained on). */
    eval_fraction: number;
    /** Evaluate every this many steps (and at the end). */
    eval_every: number;
  };

/** DeepSpeed-Chat's step-3 arguments, under its names, with its defaults where it has them. */
export type PpoHyperparameters = CommonHyperparameters & {
  /** PPO alone: the actor and reference start from this SFT (or actor) checkpoint. */
  sft_checkpoint_id?: string;
  /** PPO alone: reward model and critic start from this reward checkpoint. */
  reward_checkpoint_id?: string;
  per_device_generation_batch_size: number;
  per_device_training_batch_size: number;
  ppo_epochs: number;
  max_prompt_seq_len: number;
  max_answer_seq_len: number;
  actor_learning_rate: number;
  critic_learning_rate: number;
  actor_weight_decay: number;
  critic_weight_decay: number;
  num_warmup_steps: number;
  kl_ctl: number;
  clip_reward_value: number;
  cliprange: number;
  cliprange_value: number;
  gamma: number;
  lam: number;
  temperature: number;
  top_p: number;
  enable_ema: boolean;
  ema_beta: number;
  unsup_coef: number;
  /** LoRA rank of the actor (0: none) and the projections that get adapters (loraTargetNames). */
  actor_lora_dim: number;
  actor_lora_module_name: string;
  /** LoRA rank of the critic (0: none) and the projections that get adapters. */
  critic_lora_dim: number;
  critic_lora_module_name: string;
  /**
   * Train only the adapters of the actor and the critic: each with a lora dim above 0 keeps its
   * base weights frozen, one with 0 trains all its weights (DeepSpeed-Chat). Needs one above 0.
   */
  only_optimize_lora: boolean;
  actor_lora_learning_rate: number;
  critic_lora_learning_rate: number;
  /** Adaptive KL controller (Ziegler et al.): kl_ctl moves so the KL approaches target. */
  adaptive_kl?: { target: number; horizon: number };
};

/** The stored form of a run: the request body with every default applied. */
export type RunSpec = {
  name: string;
  model: ModelSpec;
  /** stages: which stages the dataset feeds (default all three). */
  datasets: { id: string; weight: number; stages: StageName[] }[];
  data_split: [number, number, number];
  /** The stages this run trains are the keys present (a run without `stages` trains sft). */
  stages: { sft?: SftHyperparameters; reward?: RewardHyperparameters; ppo?: PpoHyperparameters };
  compute: { device: string; price_per_hour: number };
  seed: number;
};

/**
 * DeepSpeed-Chat's LoRA defaults (steps 1 and 2), but for lora_module_name: its
 * "decoder.layers." names OPT's layers, "h." selects every projection of this GPT-2 layout.
 */
export const LORA_DEFAULTS: LoraHyperparameters = {
  lora_dim: 0,
  lora_module_name: "h.",
  only_optimize_lora: false,
  lora_learning_rate: 5e-4,
};

// The same defaults as openapi.yaml states; normalizeRunSpec does not rely on Ajv's useDefaults.
// No max_steps default: absent, epochs decide (Hugging Face's Trainer).
export const SFT_DEFAULTS: SftHyperparameters = {
  epochs: 1,
  batch_size: 8,
  learning_rate: 1e-3,
  max_seq_len: 128,
  checkpoint_every: 25,
  warmup_steps: 10,
  weight_decay: 0.01,
  grad_clip: 1.0,
  ...LORA_DEFAULTS,
};

/** DeepSpeed-Chat's step 2 (reward model) defaults: lr 5e-5, no warm-up, no weight decay. */
export const REWARD_DEFAULTS: RewardHyperparameters = {
  epochs: 1,
  batch_size: 8,
  learning_rate: 5e-5,
  max_seq_len: 128,
  checkpoint_every: 25,
  warmup_steps: 0,
  weight_decay: 0,
  grad_clip: 1.0,
  eval_fraction: 0.1,
  eval_every: 25,
  ...LORA_DEFAULTS,
};

/**
 * DeepSpeed-Chat's step 3 (PPO) defaults. The two sequence lengths are its 256 each;
 * normalizeRunSpec lowers them to half the context when the models' context is shorter.
 */
export const PPO_DEFAULTS: PpoHyperparameters = {
  epochs: 1,
  checkpoint_every: 25,
  grad_clip: 1.0,
  per_device_generation_batch_size: 16,
  per_device_training_batch_size: 16,
  ppo_epochs: 1,
  max_prompt_seq_len: 256,
  max_answer_seq_len: 256,
  actor_learning_rate: 9.65e-6,
  critic_learning_rate: 5e-6,
  actor_weight_decay: 0,
  critic_weight_decay: 0,
  num_warmup_steps: 100,
  kl_ctl: 0.1,
  clip_reward_value: 5,
  cliprange: 0.2,
  cliprange_value: 0.2,
  gamma: 1.0,
  lam: 0.95,
  temperature: 1.0,
  top_p: 1.0,
  enable_ema: false,
  ema_beta: 0.992,
  unsup_coef: 27.8,
  actor_lora_dim: 0,
  actor_lora_module_name: LORA_DEFAULTS.lora_module_name,
  critic_lora_dim: 0,
  critic_lora_module_name: LORA_DEFAULTS.lora_module_name,
  only_optimize_lora: false,
  actor_lora_learning_rate: LORA_DEFAULTS.lora_learning_rate,
  critic_lora_learning_rate: LORA_DEFAULTS.lora_learning_rate,
};

/** The default prompt and answer length for PPO sequences that must fit `contextLength` tokens. */
export function defaultPpoSeqLen(contextLength: number): number {
  return Math.min(PPO_DEFAULTS.max_prompt_seq_len, Math.floor(contextLength / 2));
}

function toModelSpec(model: components["schemas"]["ModelSource"]): ModelSpec {
  return model.checkpoint_id !== undefined
    ? { checkpoint_id: model.checkpoint_id }
    : { preset: model.preset ?? "tiny" };
}

export type NormalizeOptions = {
  /**
   * The context length PPO's sequences must fit (the shorter of the actor's and the reward
   * model's). Without it the PPO sequence lengths default to PPO_DEFAULTS' 256 each.
   */
  ppoContextLength?: number;
};

/**
 * Applies defaults to a schema-validated run request. The stages trained are the keys of
 * `stages` (absent or `{}`: sft only); each gets its defaults merged under what the body gave.
 */
export function normalizeRunSpec(body: RunCreateRequest, opts: NormalizeOptions = {}): RunSpec {
  const [sft = 2, reward = 4, ppo = 4] = body.data_split ?? [];
  const given = body.stages ?? {};
  const stages: RunSpec["stages"] = {};
  if (given.sft || (!given.reward && !given.ppo)) stages.sft = { ...SFT_DEFAULTS, ...given.sft };
  if (given.reward) {
    const { model, ...rest } = given.reward;
    stages.reward = {
      ...REWARD_DEFAULTS,
      ...rest,
      ...(model ? { model: toModelSpec(model) } : {}),
    };
  }
  if (given.ppo) {
    const seqLen =
      opts.ppoContextLength === undefined
        ? PPO_DEFAULTS.max_prompt_seq_len
        : defaultPpoSeqLen(opts.ppoContextLength);
    stages.ppo = {
      ...PPO_DEFAULTS,
      max_prompt_seq_len: seqLen,
      max_answer_seq_len: seqLen,
      ...given.ppo,
    };
  }
  return {
    name: body.name,
    model: toModelSpec(body.model),
    datasets: body.datasets.map((d) => ({
      id: d.id,
      weight: d.weight ?? 1,
      // A set: stored in pipeline order, so a retry listing them differently is the same run.
      stages: STAGE_ORDER.filter((kind) => (d.stages ?? STAGE_ORDER).includes(kind)),
    })),
    data_split: [sft, reward, ppo],
    stages,
    compute: {
      device: body.compute?.device ?? "cpu",
      price_per_hour: body.compute?.price_per_hour ?? 0,
    },
    seed: body.seed ?? 42,
  };
}

/**
 * A spec as Postgres holds it (a run's `spec`), read as a RunSpec: each stage's settings over
 * its defaults, so a spec stored before a setting existed (the LoRA ones, say) reads with that
 * setting's default, which is what the run was submitted under. A stored value always wins;
 * the PPO sequence lengths, which depend on the models, have always been stored.
 */
export function readRunSpec(stored: unknown): RunSpec {
  const spec = stored as RunSpec;
  const given = spec?.stages;
  if (typeof given !== "object" || given === null) return spec;
  const stages: RunSpec["stages"] = {};
  if (given.sft) stages.sft = { ...SFT_DEFAULTS, ...given.sft };
  if (given.reward) stages.reward = { ...REWARD_DEFAULTS, ...given.reward };
  if (given.ppo) stages.ppo = { ...PPO_DEFAULTS, ...given.ppo };
  return { ...spec, stages };
}

/** The stages a spec trains, in pipeline order. */
export function trainedStages(spec: Pick<RunSpec, "stages">): StageName[] {
  return STAGE_ORDER.filter((kind) => spec.stages[kind] !== undefined);
}

/**
 * The dataset formats each stage can use: sft all (a preference row's chosen answer), the
 * reward model only preference pairs, PPO the prompts of all (supervised and chat answers also
 * feed the pretraining mix).
 */
export const STAGE_FORMATS: Readonly<Record<StageName, readonly DatasetFormat[]>> = {
  sft: ["supervised", "preference", "chat"],
  reward: ["preference"],
  ppo: ["supervised", "preference", "chat"],
};

/**
 * THE data routing rule, shared by the api (checks at submission) and the worker (training):
 * the data_split one dataset of the spec is cut by. Each dataset's rows are divided among the
 * stages it feeds (`datasets[i].stages`) that the run trains, in proportion to `data_split`;
 * the shares of the other stages are 0. Pass the result to the engine's splitForStage (which
 * shuffles the rows with the seed and cuts them by cumulative proportions); all zeros means the
 * dataset feeds none of the run's stages (the api refuses such a run).
 */
export function datasetSplit(spec: RunSpec, datasetIndex: number): [number, number, number] {
  const dataset = spec.datasets[datasetIndex];
  if (!dataset) throw new RangeError(`the spec has no datasets[${datasetIndex}]`);
  const trained = trainedStages(spec);
  return STAGE_ORDER.map((kind, k) =>
    trained.includes(kind) && dataset.stages.includes(kind) ? spec.data_split[k] : 0,
  ) as [number, number, number];
}

/**
 * How many of `rows` rows each stage gets under `split`, exactly as splitForStage cuts them:
 * boundaries round(rows * cumulative share / total). All zeros when the split is all zeros.
 */
export function splitRowCounts(rows: number, split: readonly number[]): [number, number, number] {
  const total = split.reduce((a, b) => a + b, 0);
  if (total <= 0) return [0, 0, 0];
  let cumulative = 0;
  let previous = 0;
  return split.map((share) => {
    cumulative += share;
    const bound = Math.round((rows * cumulative) / total);
    const count = bound - previous;
    previous = bound;
    return count;
  }) as [number, number, number];
}

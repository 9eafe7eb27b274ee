// The rules a run spec must meet before POST /v1/runs stores and queues it, beside the route
// (STYLE.md). In the order the route applies them: the body's shape (400), which stages need
// which checkpoints and what the checkpoints are (404, 422), the spec's parts against each other
// (422), then the data each stage gets (404, 422), its step estimate and the warnings.
import {
  ApiError,
  datasetSplit,
  LORA_PROJECTIONS,
  loraTargetNames,
  type ModelSpec,
  type RunCreateRequest,
  type RunSpec,
  STAGE_FORMATS,
  STAGE_ORDER,
  type StageName,
  splitRowCounts,
  trainedStages,
} from "@chatrl/contracts";
import { type DatasetFactsLookup, type DatasetLengths, type Db, getCheckpoint } from "@chatrl/db";
import { MODEL_PRESETS } from "@chatrl/engine/config";

/** Blended rows of one stage past this would not fit a worker's memory (examples are tokenized up front). */
export const MAX_STAGE_ROWS = 1_000_000;

function invalid(param: string, message: string): ApiError {
  return new ApiError(422, message, { param, code: "invalid_value" });
}

function notFound(what: string, id: string, param: string): ApiError {
  return new ApiError(404, `No ${what} with id '${id}'`, { param, code: "not_found" });
}

/** `model` and `stages.reward.model` name exactly one source (not expressed in the schema). */
export function checkModelSources(body: RunCreateRequest): void {
  const sources: [string, object | undefined][] = [
    ["model", body.model],
    ["stages.reward.model", body.stages?.reward?.model],
  ];
  for (const [param, source] of sources) {
    if (source !== undefined && Object.keys(source).length !== 1) {
      throw new ApiError(400, `'${param}' must have exactly one of 'preset' or 'checkpoint_id'`, {
        param,
        code: "invalid_value",
      });
    }
  }
}

const PARENTS = [
  { kind: "sft", param: "sft_checkpoint_id", what: "actor and reference", roles: ["sft", "actor"] },
  {
    kind: "reward",
    param: "reward_checkpoint_id",
    what: "reward model and critic",
    roles: ["reward"],
  },
] as const;

/**
 * Sub-pipelines: PPO starts from its parent stages in the same run, or from the checkpoints
 * `stages.ppo.sft_checkpoint_id` / `reward_checkpoint_id` name in their place; never both.
 */
export function checkPipeline(body: RunCreateRequest): void {
  const stages = body.stages ?? {};
  const ppo = stages.ppo;
  if (!ppo) return;
  for (const { kind, param, what, roles } of PARENTS) {
    const inRun = stages[kind] !== undefined;
    if (inRun && ppo[param] !== undefined) {
      throw invalid(
        `stages.ppo.${param}`,
        `stages.ppo.${param} names where PPO's ${what} start, but this run trains the ${kind} ` +
          `stage they start from; remove stages.ppo.${param} or stages.${kind}`,
      );
    }
    if (!inRun && ppo[param] === undefined) {
      throw invalid(
        `stages.ppo.${param}`,
        `PPO without a ${kind} stage in the same run needs stages.ppo.${param}: a checkpoint of ` +
          `role ${roles.join(" or ")} from an earlier run for its ${what}; or add stages.${kind}`,
      );
    }
  }
}

/** What the rules read of a model's config (undefined: a checkpoint's that does not say). */
export type ModelShape = { contextLength?: number; nLayers?: number; dModel?: number };

/** The models a run trains: sft the run's model, reward its own or the run's; PPO's two. */
export type RunModels = {
  sft: ModelShape;
  reward: ModelShape;
  /** PPO's actor: the sft stage's model, or sft_checkpoint_id's. */
  actor?: ModelShape;
  /** PPO's critic: the reward stage's model, or reward_checkpoint_id's. */
  critic?: ModelShape;
};

/** Context lengths of the models each stage trains, in tokens (undefined: a checkpoint that does not say). */
export type RunContexts = {
  sft?: number;
  reward?: number;
  /** The shorter of PPO's actor and reward model: its prompt and answer go through both. */
  ppo?: number;
  models: RunModels;
};

function positiveInt(value: unknown): number | undefined {
  return typeof value === "number" && Number.isInteger(value) && value > 0 ? value : undefined;
}

/** A preset's or a checkpoint's model config (a ModelConfig as the worker saved it). */
function shapeOf(config: unknown): ModelShape {
  const c = (config ?? {}) as { contextLength?: number; nLayers?: unknown; dModel?: unknown };
  return {
    contextLength: c.contextLength,
    nLayers: positiveInt(c.nLayers),
    dModel: positiveInt(c.dModel),
  };
}

async function modelShape(p: Db, model: ModelSpec, param: string): Promise<ModelShape> {
  if ("preset" in model) return shapeOf(MODEL_PRESETS[model.preset]);
  const checkpoint = await getCheckpoint(p, model.checkpoint_id);
  if (!checkpoint) throw notFound("checkpoint", model.checkpoint_id, `${param}.checkpoint_id`);
  return shapeOf(checkpoint.config);
}

function min(...values: (number | undefined)[]): number | undefined {
  const known = values.filter((v): v is number => v !== undefined);
  return known.length === 0 ? undefined : Math.min(...known);
}

/**
 * Looks up every checkpoint the body names (404 naming the param) and checks the roles of PPO's
 * starting checkpoints (422 naming both roles). Returns the models' context lengths and shapes.
 */
export async function resolveModels(p: Db, body: RunCreateRequest): Promise<RunContexts> {
  const runModel: ModelSpec = body.model.checkpoint_id
    ? { checkpoint_id: body.model.checkpoint_id }
    : { preset: body.model.preset ?? "tiny" };
  const runShape = await modelShape(p, runModel, "model");
  const rewardSource = body.stages?.reward?.model;
  const rewardShape = rewardSource?.checkpoint_id
    ? await modelShape(p, { checkpoint_id: rewardSource.checkpoint_id }, "stages.reward.model")
    : rewardSource?.preset
      ? shapeOf(MODEL_PRESETS[rewardSource.preset])
      : runShape;
  const contexts: RunContexts = {
    sft: runShape.contextLength,
    reward: rewardShape.contextLength,
    models: { sft: runShape, reward: rewardShape },
  };

  const ppo = body.stages?.ppo;
  if (ppo) {
    const parent: Record<"sft" | "reward", ModelShape> = { sft: runShape, reward: rewardShape };
    for (const { kind, param, roles } of PARENTS) {
      const id = ppo[param];
      if (id === undefined) continue;
      const checkpoint = await getCheckpoint(p, id);
      if (!checkpoint) throw notFound("checkpoint", id, `stages.ppo.${param}`);
      if (!(roles as readonly string[]).includes(checkpoint.role)) {
        throw invalid(
          `stages.ppo.${param}`,
          `checkpoint '${id}' has role ${checkpoint.role}; stages.ppo.${param} needs a ` +
            `checkpoint of role ${roles.join(" or ")}`,
        );
      }
      parent[kind] = shapeOf(checkpoint.config);
    }
    contexts.ppo = min(parent.sft.contextLength, parent.reward.contextLength);
    contexts.models.actor = parent.sft;
    contexts.models.critic = parent.reward;
  }
  return contexts;
}

const ORDINAL = ["first", "second", "third"] as const;

/**
 * The spec's parts against each other: shares of trained stages, repeats, lengths, batches.
 * `body` is the request the spec came from, to name what it gave rather than a default.
 */
export function checkSpec(body: RunCreateRequest, spec: RunSpec, contexts: RunContexts): void {
  for (const kind of trainedStages(spec)) {
    const k = STAGE_ORDER.indexOf(kind);
    if (!(spec.data_split[k] > 0)) {
      throw invalid(
        "data_split",
        `data_split: the ${kind} share (the ${ORDINAL[k]} number) must be above 0, as the run ` +
          `trains the ${kind} stage`,
      );
    }
  }

  // A repeated dataset would be trained on twice over; weights are how to favour one.
  const firstIndex = new Map<string, number>();
  for (const [i, { id }] of spec.datasets.entries()) {
    const first = firstIndex.get(id);
    if (first !== undefined) {
      throw invalid(
        `datasets[${i}].id`,
        `datasets[${i}].id repeats datasets[${first}].id '${id}'; list each dataset once and give it a weight`,
      );
    }
    firstIndex.set(id, i);
  }

  const { sft, reward, ppo } = spec.stages;
  if (sft && contexts.sft !== undefined && sft.max_seq_len > contexts.sft) {
    throw invalid(
      "stages.sft.max_seq_len",
      `stages.sft.max_seq_len ${sft.max_seq_len} is longer than the model's context of ${contexts.sft} tokens`,
    );
  }
  if (reward && contexts.reward !== undefined && reward.max_seq_len > contexts.reward) {
    throw invalid(
      "stages.reward.max_seq_len",
      `stages.reward.max_seq_len ${reward.max_seq_len} is longer than the reward model's context ` +
        `of ${contexts.reward} tokens`,
    );
  }
  if (ppo) {
    const total = ppo.max_prompt_seq_len + ppo.max_answer_seq_len;
    if (contexts.ppo !== undefined && total > contexts.ppo) {
      // Name a length the request gave (the defaults always fit): the answer's when both.
      const param =
        body.stages?.ppo?.max_answer_seq_len !== undefined
          ? "max_answer_seq_len"
          : "max_prompt_seq_len";
      throw invalid(
        `stages.ppo.${param}`,
        `stages.ppo.max_prompt_seq_len ${ppo.max_prompt_seq_len} + max_answer_seq_len ` +
          `${ppo.max_answer_seq_len} = ${total} tokens do not fit the context of ${contexts.ppo} ` +
          "tokens of PPO's models (actor and reward model); lower them",
      );
    }
    if (ppo.per_device_training_batch_size > ppo.per_device_generation_batch_size) {
      throw invalid(
        "stages.ppo.per_device_training_batch_size",
        `stages.ppo.per_device_training_batch_size ${ppo.per_device_training_batch_size} is ` +
          `larger than the ${ppo.per_device_generation_batch_size} answers each step generates ` +
          "(per_device_generation_batch_size); PPO trains on minibatches of those",
      );
    }
    if (ppo.adaptive_kl && ppo.kl_ctl === 0) {
      throw invalid(
        "stages.ppo.kl_ctl",
        "stages.ppo.adaptive_kl scales kl_ctl, which is 0 and would stay 0; give kl_ctl above 0",
      );
    }
  }
  checkLora(spec, contexts.models);
}

/** One model's LoRA settings as a stage's spec names them. */
type LoraTarget = {
  /** The stage's params, e.g. stages.ppo.actor_lora_dim. */
  dimParam: string;
  moduleParam: string;
  dim: number;
  moduleName: string;
  /** The model in messages: "the model", "the reward model", "the actor", "the critic". */
  model: string;
  shape: ModelShape | undefined;
};

/**
 * LoRA (DeepSpeed-Chat's lora_dim, lora_module_name, only_optimize_lora) against the models:
 * only_optimize_lora needs adapters to train; a rank at most the model's width; a module name
 * that selects at least one projection of the model (contracts' loraTargetNames, which the
 * engine applies too). A checkpoint whose config does not give its width or layers is not
 * checked on those.
 */
export function checkLora(spec: RunSpec, models: RunModels): void {
  const { sft, reward, ppo } = spec.stages;
  const targets: LoraTarget[] = [];
  for (const [kind, stage, model, shape] of [
    ["sft", sft, "the model", models.sft],
    ["reward", reward, "the reward model", models.reward],
  ] as const) {
    if (!stage) continue;
    if (stage.only_optimize_lora && stage.lora_dim === 0) {
      throw invalid(
        `stages.${kind}.only_optimize_lora`,
        `stages.${kind}.only_optimize_lora needs lora_dim > 0: it trains only the LoRA ` +
          `adapters, and with stages.${kind}.lora_dim 0 there are none (nothing would train); ` +
          "give lora_dim (e.g. 8) or leave only_optimize_lora false",
      );
    }
    targets.push({
      dimParam: `stages.${kind}.lora_dim`,
      moduleParam: `stages.${kind}.lora_module_name`,
      dim: stage.lora_dim,
      moduleName: stage.lora_module_name,
      model,
      shape,
    });
  }
  if (ppo) {
    if (ppo.only_optimize_lora && ppo.actor_lora_dim === 0 && ppo.critic_lora_dim === 0) {
      throw invalid(
        "stages.ppo.only_optimize_lora",
        "stages.ppo.only_optimize_lora needs lora_dim > 0 for the actor or the critic: it trains " +
          "only the LoRA adapters, and with stages.ppo.actor_lora_dim and critic_lora_dim both 0 " +
          "there are none (nothing would train); give actor_lora_dim or critic_lora_dim (e.g. 8) " +
          "or leave only_optimize_lora false",
      );
    }
    for (const [role, dim, moduleName, shape] of [
      ["actor", ppo.actor_lora_dim, ppo.actor_lora_module_name, models.actor],
      ["critic", ppo.critic_lora_dim, ppo.critic_lora_module_name, models.critic],
    ] as const) {
      targets.push({
        dimParam: `stages.ppo.${role}_lora_dim`,
        moduleParam: `stages.ppo.${role}_lora_module_name`,
        dim,
        moduleName,
        model: `the ${role}`,
        shape,
      });
    }
  }

  for (const { dimParam, moduleParam, dim, moduleName, model, shape } of targets) {
    if (dim === 0 || !shape) continue;
    if (shape.dModel !== undefined && dim > shape.dModel) {
      throw invalid(
        dimParam,
        `${dimParam} ${dim} is larger than the width (d_model) of ${model}, ${shape.dModel}; ` +
          `a LoRA rank is at most the width (a low-rank update), give ${shape.dModel} or less`,
      );
    }
    if (shape.nLayers !== undefined && loraTargetNames(shape.nLayers, moduleName).length === 0) {
      const examples = LORA_PROJECTIONS.map((projection) => `h.0.${projection}`).join(", ");
      throw invalid(
        moduleParam,
        `${moduleParam} '${moduleName}' selects no projection of ${model} ` +
          `(${shape.nLayers} layers): projections whose name contains it get adapters, and ` +
          `the names are h.<layer>.attn.c_attn, h.<layer>.attn.c_proj, h.<layer>.mlp.c_fc and ` +
          `h.<layer>.mlp.c_proj for layers 0 to ${shape.nLayers - 1} (e.g. ${examples}); ` +
          `"h." (the default) selects them all, "attn." the attention ones`,
      );
    }
  }
}

export type StagePlan = {
  stages: { kind: StageName; maxSteps: number }[];
  warnings: string[];
};

/** What a stage calls its rows in messages. */
const ROWS: Record<StageName, string> = { sft: "rows", reward: "preference pairs", ppo: "prompts" };

/**
 * Routes each dataset's rows to the run's stages by THE rule (contracts' datasetSplit, which the
 * worker applies too), refuses a stage left without rows it can use, estimates each stage's
 * steps and collects the warnings: rows a stage cannot use, examples longer than a stage's
 * sequence length. Looks up every dataset (404 naming the param) with `lookupDatasets`.
 */
export async function planStages(
  lookupDatasets: DatasetFactsLookup,
  spec: RunSpec,
): Promise<StagePlan> {
  const trained = trainedStages(spec);
  const usable: Record<StageName, number> = { sft: 0, reward: 0, ppo: 0 };
  // Whether any dataset feeds the stage, and any of a format it can use.
  const fed: Record<StageName, boolean> = { sft: false, reward: false, ppo: false };
  const fedUsable: Record<StageName, boolean> = { sft: false, reward: false, ppo: false };
  // Per dataset, the stages that get rows of it they can use (for the length warnings).
  const feeding: { id: string; stages: StageName[] }[] = [];
  const warnings: string[] = [];

  // At most one round trip for all of them (a dataset's facts, its longest examples measured at
  // upload among them, never change: datasetFactsCache).
  const datasets = await lookupDatasets(spec.datasets.map((ref) => ref.id));
  const lengths = new Map<string, DatasetLengths>();
  for (const [i, ref] of spec.datasets.entries()) {
    const dataset = datasets.get(ref.id);
    if (!dataset) throw notFound("dataset", ref.id, `datasets[${i}].id`);
    const split = datasetSplit(spec, i);
    if (split.every((share) => share === 0)) {
      throw invalid(
        `datasets[${i}].stages`,
        `datasets[${i}] ('${ref.id}') feeds ${ref.stages.join(", ")}, none of which this run ` +
          `trains (${trained.join(", ")}); add one of those to datasets[${i}].stages or leave the dataset out`,
      );
    }
    const counts = splitRowCounts(dataset.rowCount, split);
    const stages: StageName[] = [];
    for (const [k, kind] of STAGE_ORDER.entries()) {
      if (split[k] === 0) continue;
      fed[kind] = true;
      // blendDatasets takes round(weight * rows) of the dataset's part.
      const rows = Math.round(ref.weight * counts[k]);
      if (STAGE_FORMATS[kind].includes(dataset.format)) {
        fedUsable[kind] = true;
        usable[kind] += rows;
        if (counts[k] > 0) stages.push(kind);
      } else if (counts[k] > 0) {
        warnings.push(
          `dataset ${ref.id} (${dataset.format}) gives the ${kind} stage ${counts[k]} rows it ` +
            `cannot use (it trains on ${STAGE_FORMATS[kind].join(" or ")} rows only); they are ` +
            `left out: list the stages it should feed in datasets[${i}].stages`,
        );
      }
    }
    feeding.push({ id: ref.id, stages });
    lengths.set(ref.id, {
      prompt: dataset.longestPrompt,
      sft: dataset.longestSft,
      pair: dataset.longestPair,
    });
  }

  for (const kind of trained) {
    const rows = usable[kind];
    if (!fed[kind]) {
      throw invalid(
        `stages.${kind}`,
        `no dataset feeds the ${kind} stage: add "${kind}" to the stages of a dataset ` +
          "(datasets[].stages), or drop the stage",
      );
    }
    if (!fedUsable[kind]) {
      throw invalid(
        `stages.${kind}`,
        `the ${kind} stage trains on ${STAGE_FORMATS[kind].join(" or ")} rows and none of the ` +
          `datasets feeding it has them; add such a dataset`,
      );
    }
    if (rows === 0) {
      throw invalid(
        "data_split",
        `data_split [${spec.data_split.join(", ")}] and the weights give the ${kind} stage 0 rows ` +
          `of the datasets; raise the ${ORDINAL[STAGE_ORDER.indexOf(kind)]} number of data_split ` +
          "or the weights, or add rows",
      );
    }
    if (rows > MAX_STAGE_ROWS) {
      throw invalid(
        "datasets",
        `the datasets' weights give the ${kind} stage ${rows} rows; at most ${MAX_STAGE_ROWS} fit a worker`,
      );
    }
    if (kind === "reward" && rows < 2) {
      throw invalid(
        "data_split",
        "data_split and the weights give the reward stage 1 preference pair; it needs 2 or more " +
          "(eval_fraction holds some out to measure accuracy)",
      );
    }
  }

  for (const dataset of feeding) {
    const measured = lengths.get(dataset.id);
    if (measured && dataset.stages.length > 0) {
      warnings.push(...lengthWarnings(spec, dataset.id, dataset.stages, measured));
    }
  }

  return {
    stages: trained.map((kind) => ({ kind, maxSteps: estimateSteps(spec, kind, usable[kind]) })),
    warnings,
  };
}

/**
 * The steps a stage will take: max_steps when given, else epochs over its rows in batches (for
 * the reward model, the pairs not held out; for PPO, one step per generation batch). An estimate:
 * the worker corrects it once it has tokenized the data (chat rows give one example per answer,
 * examples that do not fit are dropped).
 */
export function estimateSteps(spec: RunSpec, kind: StageName, rows: number): number {
  const { sft, reward, ppo } = spec.stages;
  const stage = kind === "sft" ? sft : kind === "reward" ? reward : ppo;
  if (!stage) throw new Error(`the spec does not train ${kind}`);
  if (stage.max_steps !== undefined) return stage.max_steps;
  let batch: number;
  let examples = rows;
  if (kind === "ppo" && ppo) batch = ppo.per_device_generation_batch_size;
  else if (kind === "reward" && reward) {
    batch = reward.batch_size;
    examples = rows - Math.round(rows * reward.eval_fraction);
  } else batch = (sft as { batch_size: number }).batch_size;
  return Math.max(1, Math.ceil((stage.epochs * Math.max(1, examples)) / batch));
}

/** Token counts are the engine's byte tokenizer's: UTF-8 bytes of the templated text, + 1 eos. */
function lengthWarnings(
  spec: RunSpec,
  id: string,
  stages: StageName[],
  measured: DatasetLengths,
): string[] {
  const warnings: string[] = [];
  const { sft, reward, ppo } = spec.stages;
  const check = (kind: "sft" | "reward", longest: number, maxSeqLen: number) => {
    if (longest <= maxSeqLen) return;
    let warning =
      `dataset ${id} has ${ROWS[kind]} of up to ${longest} tokens, longer than ` +
      `stages.${kind}.max_seq_len ${maxSeqLen}: their ends will be cut`;
    // An example keeps its whole prompt and at least one answer token, or is dropped.
    if (measured.prompt + 1 > maxSeqLen) {
      warning += `, and those whose prompt alone takes ${maxSeqLen} tokens or more (the longest takes ${measured.prompt}) will be left out`;
    }
    warnings.push(warning);
  };
  if (sft && stages.includes("sft")) check("sft", measured.sft, sft.max_seq_len);
  if (reward && stages.includes("reward")) check("reward", measured.pair, reward.max_seq_len);
  if (ppo && stages.includes("ppo") && measured.prompt > ppo.max_prompt_seq_len) {
    warnings.push(
      `dataset ${id} has prompts of up to ${measured.prompt} tokens, longer than ` +
        `stages.ppo.max_prompt_seq_len ${ppo.max_prompt_seq_len}: the ppo stage cannot use them ` +
        "whole (it counts them in examples_truncated / examples_dropped)",
    );
  }
  return warnings;
}

// What every trainer does to a model's weights, in one place: gradients of a loss, global-norm
// clipping, an AdamW step at the scheduled learning rate, and the optimizer state saved and
// restored under a per-model prefix (PPO's actor and critic moments share one file).
import * as tf from "@tensorflow/tfjs";
import { tensorsToStored } from "./checkpoint";
import type { GPT } from "./model";
import { V_HEAD, ValueModel } from "./value-model";
import { AdamW, clipByGlobalNorm, type LrSchedule, lrAt } from "./optim";
import { decodeSafetensors, encodeSafetensors } from "./safetensors";

/** Named as the trainers' configs name them, so a trainer passes `{ ...config, totalSteps }`. */
export type TrainStateConfig = {
  /** Peak of the schedule: linear warmup over warmupSteps, then a cosine to a tenth at totalSteps. */
  learningRate: number;
  warmupSteps: number;
  /** Optimizer updates in all. */
  totalSteps: number;
  weightDecay: number;
  /** Global gradient-norm limit; 0 disables clipping. */
  gradClip: number;
  /**
   * Peak learning rate of LoRA adapters (weights named `*.lora_*`), scheduled like the others
   * (DeepSpeed-Chat's lora_learning_rate). Default: learningRate.
   */
  loraLearningRate?: number;
};

/** Whether a weight name is a LoRA adapter's (GPT.loraWeights). */
export function isLoraWeight(name: string): boolean {
  return name.endsWith(".lora_right_weight") || name.endsWith(".lora_left_weight");
}

/** LoRA for a trainer: DeepSpeed-Chat's lora_dim, lora_module_name, only_optimize_lora, lora_learning_rate. */
export type LoraTraining = {
  dim: number;
  moduleName: string;
  /** Train the adapters only; every other weight stays as it was. */
  onlyOptimize: boolean;
  learningRate: number;
};

/**
 * The weights a trainer updates: with `lora`, adapters are added to the model (a value model's
 * body) first, seeded by `seed`, and with onlyOptimize they are all it trains, but for a value
 * model's head (DeepSpeed-Chat freezes that too, which leaves a fresh reward head random).
 */
export function trainableWeights(
  model: GPT | ValueModel,
  lora: LoraTraining | undefined,
  seed: number,
): Map<string, tf.Variable> {
  if (!lora) return model.namedWeights();
  const body = model instanceof ValueModel ? model.body : model;
  body.addLora({ dim: lora.dim, moduleName: lora.moduleName, seed });
  const adapters = body.loraWeights();
  if (!lora.onlyOptimize) return new Map([...model.namedWeights(), ...adapters]);
  if (model instanceof ValueModel) adapters.set(V_HEAD, model.vHead);
  return adapters;
}

export type UpdateResult = { loss: number; gradNorm: number; lr: number };

export class TrainState {
  private readonly optimizer: AdamW;
  /** HF weight name of each trainable variable, by the variable's tfjs name (which gradients use). */
  private readonly nameOf = new Map<string, string>();
  private readonly variables: tf.Variable[];
  private readonly schedule: LrSchedule;

  /**
   * prefix: put before every state tensor and metadata key ("" for a single model, "actor." /
   * "critic." for PPO). weights: the trainable variables by HF name (owned by their model).
   * loraModel: the model whose LoRA adapters are trained; its adapters and unmerged projections
   * are saved with the state, since its checkpoints hold them merged.
   */
  constructor(
    readonly prefix: string,
    weights: Map<string, tf.Variable>,
    readonly config: TrainStateConfig,
    log?: (message: string) => void,
    private readonly loraModel?: GPT,
  ) {
    this.variables = [...weights.values()];
    for (const [name, variable] of weights) this.nameOf.set(variable.name, name);
    const { learningRate: peak, warmupSteps, totalSteps } = config;
    this.schedule = { peak, warmupSteps, totalSteps, minRatio: 0.1 };
    this.optimizer = new AdamW(weights, { weightDecay: config.weightDecay });
    const { decay, noDecay } = this.optimizer.groups();
    log?.(
      `AdamW${prefix ? ` (${prefix.replace(/\.$/, "")})` : ""}: ${decay.tensors} decayed tensors ` +
        `(${decay.parameters} parameters), ${noDecay.tensors} non-decayed tensors ` +
        `(${noDecay.parameters} parameters)`,
    );
  }

  /** Optimizer steps taken. */
  get steps(): number {
    return this.optimizer.step;
  }

  /** The learning rate of the next update. */
  lr(): number {
    return lrAt(this.optimizer.step, this.schedule);
  }

  /**
   * One update: d loss / d weights, clipped to the global norm, an AdamW step. Every tensor it
   * makes is released; `loss` may tf.keep() extra tensors of its own for the caller to read.
   */
  update(loss: () => tf.Scalar): UpdateResult {
    const lr = this.lr();
    const [value, gradNorm] = tf.tidy(() => {
      const { value, grads } = tf.variableGrads(loss, this.variables);
      const named = new Map<string, tf.Tensor>();
      for (const [varName, g] of Object.entries(grads))
        named.set(this.nameOf.get(varName) as string, g);
      const clipped = clipByGlobalNorm(named, this.config.gradClip);
      const { learningRate, loraLearningRate } = this.config;
      const loraLr = loraLearningRate === undefined ? lr : (lr * loraLearningRate) / learningRate;
      try {
        this.optimizer.apply(clipped.grads, lr, (name) => (isLoraWeight(name) ? loraLr : lr));
        return [value.dataSync()[0], clipped.norm.dataSync()[0]];
      } finally {
        // Kept for us by clipByGlobalNorm, so tidy would not release them, not even on a throw.
        for (const g of [...clipped.grads.values(), clipped.norm]) g.dispose();
      }
    });
    return { loss: value, gradNorm, lr };
  }

  /** Moments under `<prefix>exp_avg.<weight>` / `<prefix>exp_avg_sq.<weight>` (owned by the optimizer). */
  stateTensors(): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>();
    for (const [name, t] of this.optimizer.stateTensors()) out.set(this.prefix + name, t);
    if (this.loraModel)
      for (const [name, t] of this.loraModel.loraState()) out.set(this.prefix + name, t);
    return out;
  }

  stateMetadata(): Record<string, string> {
    return { [`${this.prefix}optimizer_step`]: String(this.optimizer.step) };
  }

  /** Restores what stateTensors() and stateMetadata() saved. */
  loadState(tensors: Map<string, tf.Tensor>, metadata: Record<string, string>): void {
    const own = new Map<string, tf.Tensor>();
    for (const [name, t] of tensors)
      if (name.startsWith(this.prefix)) own.set(name.slice(this.prefix.length), t);
    const step = Number(metadata[`${this.prefix}optimizer_step`]);
    this.optimizer.loadState(own, step);
    this.loraModel?.loadLoraState(own);
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}

/**
 * A trainer's state file: every TrainState's moments plus extra tensors (PPO's EMA weights are
 * saved as their own checkpoint, not here), and metadata with `kind` naming the trainer.
 */
export async function encodeTrainerState(
  kind: string,
  states: readonly TrainState[],
  metadata: Record<string, string>,
): Promise<Uint8Array> {
  const tensors = new Map<string, tf.Tensor>();
  let meta: Record<string, string> = { kind, ...metadata };
  for (const state of states) {
    for (const [name, t] of state.stateTensors()) tensors.set(name, t);
    meta = { ...meta, ...state.stateMetadata() };
  }
  return encodeSafetensors(await tensorsToStored(tensors), meta);
}

/**
 * Loads a trainer state file into its TrainStates and returns its metadata; throws when the
 * file is another trainer's or was saved with settings (`mustMatch`) that differ from ours.
 */
export function decodeTrainerState(
  bytes: Uint8Array,
  kind: string,
  states: readonly TrainState[],
  mustMatch: Record<string, string | number> = {},
): Record<string, string> {
  const { tensors, metadata } = decodeSafetensors(bytes);
  if (metadata.kind !== kind)
    throw new Error(
      `not a ${kind} state (metadata kind is ${metadata.kind ? `"${metadata.kind}"` : "missing"})`,
    );
  for (const [key, ours] of Object.entries(mustMatch)) {
    if (String(metadata[key]) !== String(ours)) {
      throw new Error(
        `trainer state was saved with ${key} ${metadata[key]}, this trainer has ${ours}`,
      );
    }
  }
  const asTensors = new Map<string, tf.Tensor>();
  try {
    for (const [name, t] of tensors) asTensors.set(name, tf.tensor(t.data, t.shape, t.dtype));
    for (const state of states) state.loadState(asTensors, metadata);
  } finally {
    for (const t of asTensors.values()) t.dispose();
  }
  return metadata;
}

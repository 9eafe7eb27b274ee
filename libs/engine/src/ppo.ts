// PPO against a reward model (step 3 of InstructGPT / DeepSpeed-Chat). Four models: the actor
// (trained; one set of weights switched by the hybrid engine between generation and training),
// the frozen reference (the SFT model, for the KL penalty), the critic (trained; starts as the
// reward model) and the frozen reward model. Each step makes one rollout (./experience) and
// runs ppo_epochs passes over it in minibatches: the clipped surrogate for the actor (plus
// unsup_coef times the language-model loss on pretraining rows, when given) and the clipped
// value loss for the critic. Optionally keeps an EMA of the actor.
import { performance } from "node:perf_hooks";
import * as tf from "@tensorflow/tfjs";
import { type ChatPrompt, encodePrompt } from "./chat";
import {
  buildSftBatch,
  EpochBatches,
  type SftExample,
  type TokenizedExample,
  tokenizeSftExamples,
} from "./data";
import { makeExperience, type Rollout, tokenLogprobs } from "./experience";
import { HybridEngine } from "./hybrid";
import { adaptKlCoefficient, clippedSurrogateLoss, clippedValueLoss, maskedMean } from "./losses";
import { GPT } from "./model";
import { crossEntropy } from "./ops";
import { Rng, type RngState } from "./rng";
import type { SampleOptions } from "./sampler";
import { stepsFor } from "./sft";
import type { Tokenizer } from "./tokenizer";
import {
  decodeTrainerState,
  encodeTrainerState,
  type LoraTraining,
  TrainState,
  trainableWeights,
} from "./train-state";
import type { StageTrainer, StepReport } from "./trainer";
import type { ValueModel } from "./value-model";

/** DeepSpeed-Chat's step-3 knobs (camelCase of its argument names). */
export type PpoConfig = {
  /** Steps (one rollout each); absent: `epochs` passes over the prompts decide. */
  maxSteps?: number;
  epochs: number;
  generationBatchSize: number;
  trainingBatchSize: number;
  ppoEpochs: number;
  maxPromptSeqLen: number;
  maxAnswerSeqLen: number;
  actorLearningRate: number;
  criticLearningRate: number;
  actorWeightDecay: number;
  criticWeightDecay: number;
  warmupSteps: number;
  klCtl: number;
  clipRewardValue: number;
  cliprange: number;
  cliprangeValue: number;
  gamma: number;
  lam: number;
  temperature: number;
  topP: number;
  enableEma: boolean;
  emaBeta: number;
  unsupCoef: number;
  adaptiveKl?: { target: number; horizon: number };
  gradClip: number;
  seed: number;
  /** LoRA adapters for the actor and for the critic (absent: every weight trains). */
  actorLora?: LoraTraining;
  criticLora?: LoraTraining;
  /** Default true; false makes rollouts recompute the whole sequence per token (benchmarks). */
  useKvCache?: boolean;
  log?: (message: string) => void;
};

export type PpoModels = {
  actor: GPT;
  reference: GPT;
  critic: ValueModel;
  reward: ValueModel;
  /** The EMA copy of the actor (same shapes), updated after every step when enableEma. */
  ema?: GPT;
};

const STATE_KIND = "chatrl.ppo-trainer";
/** Steps whose figures make the stage's summary (the last few, not one noisy batch). */
const SUMMARY_WINDOW = 5;

export class PPOTrainer implements StageTrainer {
  step = 0;
  readonly totalSteps: number;
  /** Prompts dropped because they are longer than maxPromptSeqLen (DeepSpeed-Chat filters them too). */
  readonly dropped: number;
  /** Pretraining-mix examples whose end was cut to fit. */
  readonly truncated: number;
  readonly hybrid: HybridEngine;
  private readonly models: PpoModels;
  private readonly config: PpoConfig;
  private readonly tokenizer: Tokenizer;
  private readonly prompts: number[][];
  private readonly ptx: TokenizedExample[];
  private readonly promptBatches: EpochBatches<number[]>;
  private readonly ptxBatches?: EpochBatches<TokenizedExample>;
  private readonly actorState: TrainState;
  private readonly criticState: TrainState;
  private rng: Rng;
  private klCtl: number;
  private recent: { rewardScore: number; kl: number }[] = [];

  constructor(
    models: PpoModels,
    tokenizer: Tokenizer,
    prompts: readonly ChatPrompt[],
    pretraining: readonly SftExample[],
    config: PpoConfig,
  ) {
    validatePpoConfig(config, models.actor);
    if (config.enableEma && !models.ema) throw new Error("PPO: enableEma needs an ema model");
    this.models = models;
    this.config = { ...config };
    this.tokenizer = tokenizer;
    this.hybrid = new HybridEngine(models.actor);
    const encoded = prompts.map((p) => encodePrompt(tokenizer, p));
    this.prompts = encoded.filter((ids) => ids.length > 0 && ids.length <= config.maxPromptSeqLen);
    this.dropped = encoded.length - this.prompts.length;
    if (this.prompts.length === 0) {
      throw new Error(
        `no PPO prompt fits max_prompt_seq_len ${config.maxPromptSeqLen}: all ${prompts.length} are longer`,
      );
    }
    const ptx =
      config.unsupCoef > 0
        ? tokenizeSftExamples(
            pretraining,
            tokenizer,
            config.maxPromptSeqLen + config.maxAnswerSeqLen,
          )
        : { examples: [], truncated: 0, dropped: 0 };
    this.ptx = ptx.examples;
    this.truncated = ptx.truncated;
    this.totalSteps = stepsFor(config, this.prompts.length, config.generationBatchSize);
    this.promptBatches = new EpochBatches(
      this.prompts,
      config.generationBatchSize,
      `ppo-epoch:${config.seed}`,
    );
    if (this.ptx.length > 0) {
      this.ptxBatches = new EpochBatches(
        this.ptx,
        config.trainingBatchSize,
        `ppo-ptx:${config.seed}`,
      );
    }
    this.rng = Rng.create(`ppo:${config.seed}`);
    this.klCtl = config.klCtl;

    // The schedules count optimizer updates: ppo_epochs x minibatches per step.
    const updates = this.totalSteps * config.ppoEpochs * this.minibatchesPerStep();
    const warmupUpdates = config.warmupSteps * config.ppoEpochs * this.minibatchesPerStep();
    const state = (
      prefix: string,
      model: GPT | ValueModel,
      lora: LoraTraining | undefined,
      lr: number,
      wd: number,
    ) => {
      const weights = trainableWeights(model, lora, config.seed);
      const adapted = model instanceof GPT ? model : model.body;
      return new TrainState(
        prefix,
        weights,
        {
          learningRate: lr,
          warmupSteps: warmupUpdates,
          totalSteps: updates,
          weightDecay: wd,
          gradClip: config.gradClip,
          loraLearningRate: lora?.learningRate,
        },
        config.log,
        adapted.hasLora ? adapted : undefined,
      );
    };
    this.actorState = state(
      "actor.",
      models.actor,
      config.actorLora,
      config.actorLearningRate,
      config.actorWeightDecay,
    );
    this.criticState = state(
      "critic.",
      models.critic,
      config.criticLora,
      config.criticLearningRate,
      config.criticWeightDecay,
    );
  }

  /** One rollout and its ppo_epochs of updates; every tensor it makes is released. */
  async trainStep(): Promise<StepReport> {
    if (this.step >= this.totalSteps)
      throw new Error(`PPO is finished: all ${this.totalSteps} steps are done`);
    const { config } = this;
    const rollout = await makeExperience(
      {
        hybrid: this.hybrid,
        reference: this.models.reference,
        critic: this.models.critic,
        reward: this.models.reward,
      },
      this.promptBatches.at(this.step),
      {
        sample: rolloutSampling(config, this.tokenizer, this.step),
        klCtl: this.klCtl,
        clipRewardValue: config.clipRewardValue,
        gamma: config.gamma,
        lam: config.lam,
        rng: this.rng,
      },
    );

    const t0 = performance.now();
    const losses = this.update(rollout);
    if (config.enableEma && this.models.ema)
      emaUpdate(this.models.ema, this.models.actor, config.emaBeta);
    const training = (performance.now() - t0) / 1000;

    const klCtlUsed = this.klCtl;
    if (config.adaptiveKl) {
      this.klCtl = adaptKlCoefficient(
        this.klCtl,
        rollout.stats.kl,
        rollout.batch,
        config.adaptiveKl,
      );
    }
    this.recent = [
      ...this.recent,
      { rewardScore: rollout.stats.rewardScore, kl: rollout.stats.kl },
    ].slice(-SUMMARY_WINDOW);
    this.step += 1;
    return {
      step: this.step,
      tokens: rollout.tokens,
      metrics: {
        reward_score: rollout.stats.rewardScore,
        kl: rollout.stats.kl,
        kl_ctl: klCtlUsed,
        actor_loss: losses.actorLoss,
        critic_loss: losses.criticLoss,
        clip_frac: losses.clipFraction,
        ...(this.ptx.length > 0 ? { ptx_loss: losses.ptxLoss } : {}),
        answer_len: rollout.stats.answerLength,
        entropy: rollout.stats.entropy,
        value_mean: rollout.stats.valueMean,
        return_mean: rollout.stats.returnMean,
        actor_lr: losses.actorLr,
        critic_lr: losses.criticLr,
      },
      phases: { ...rollout.seconds, training },
    };
  }

  /** The last steps' mean reward score and KL: what the stage reports when it ends. */
  summary(): Record<string, number> {
    if (this.recent.length === 0) return {};
    const mean = (k: "rewardScore" | "kl") =>
      this.recent.reduce((a, r) => a + r[k], 0) / this.recent.length;
    return { reward_score: mean("rewardScore"), kl: mean("kl") };
  }

  private minibatchesPerStep(): number {
    return Math.ceil(this.config.generationBatchSize / this.config.trainingBatchSize);
  }

  /** ppo_epochs passes over the rollout in minibatches of trainingBatchSize answers. */
  private update(rollout: Rollout) {
    const totals = { actorLoss: 0, criticLoss: 0, clipFraction: 0, ptxLoss: 0, n: 0 };
    let actorLr = 0;
    let criticLr = 0;
    const size = this.config.trainingBatchSize;
    for (let epoch = 0; epoch < this.config.ppoEpochs; epoch++) {
      for (let start = 0; start < rollout.batch; start += size) {
        const rows = Math.min(size, rollout.batch - start);
        const mb = minibatch(rollout, start, rows);
        const ptx = this.ptxBatches
          ? buildSftBatch(this.ptxBatches.at(this.actorState.steps), this.tokenizer.padId)
          : undefined;
        let clipFraction: tf.Scalar | undefined;
        let ptxLoss: tf.Scalar | undefined;
        actorLr = this.actorState.lr();
        const actor = this.actorState.update(() => {
          const logits = this.hybrid.trainingLogits(mb.ids, this.rng);
          const logp = tokenLogprobs(logits, mb.targets);
          const pg = clippedSurrogateLoss(
            logp,
            mb.oldLogp,
            mb.advantages,
            mb.mask,
            this.config.cliprange,
          );
          clipFraction = tf.keep(pg.clipFraction);
          if (!ptx) return pg.loss;
          ptxLoss = tf.keep(this.lmLoss(ptx));
          return tf.add(pg.loss, tf.mul(this.config.unsupCoef, ptxLoss)) as tf.Scalar;
        });
        criticLr = this.criticState.lr();
        const critic = this.criticState.update(() =>
          clippedValueLoss(
            this.models.critic.values(mb.ids, { training: true, rng: this.rng }),
            mb.oldValues,
            mb.returns,
            mb.mask,
            this.config.cliprangeValue,
          ),
        );
        totals.actorLoss += actor.loss;
        totals.criticLoss += critic.loss;
        totals.clipFraction += readAndDispose(clipFraction);
        totals.ptxLoss += readAndDispose(ptxLoss);
        totals.n += 1;
        const { targets: _, ...tensors } = mb;
        tf.dispose(Object.values(tensors));
      }
    }
    const n = Math.max(1, totals.n);
    return {
      actorLoss: totals.actorLoss / n,
      criticLoss: totals.criticLoss / n,
      clipFraction: totals.clipFraction / n,
      ptxLoss: totals.ptxLoss / n,
      actorLr,
      criticLr,
    };
  }

  /** Mean next-token loss of the actor on a pretraining batch (the ptx term). */
  private lmLoss(batch: ReturnType<typeof buildSftBatch>): tf.Scalar {
    const { batchSize, length } = batch;
    const inputs = tf.tensor2d(batch.inputs, [batchSize, length], "int32");
    const logits = this.hybrid.trainingLogits(inputs, this.rng);
    const nll = crossEntropy(
      logits.reshape([batchSize * length, this.models.actor.config.vocabSize]) as tf.Tensor2D,
      tf.tensor1d(batch.targets, "int32"),
    );
    return maskedMean(nll, tf.tensor1d(batch.lossMask, "float32"));
  }

  /** Actor and critic moments, step, RNG and the KL coefficient. EMA weights are their own checkpoint. */
  async exportState(): Promise<Uint8Array> {
    return encodeTrainerState(STATE_KIND, [this.actorState, this.criticState], {
      step: String(this.step),
      rng: JSON.stringify(this.rng.exportState()),
      kl_ctl: String(this.klCtl),
      recent: JSON.stringify(this.recent),
      seed: String(this.config.seed),
      generation_batch_size: String(this.config.generationBatchSize),
    });
  }

  async importState(bytes: Uint8Array): Promise<void> {
    const metadata = decodeTrainerState(bytes, STATE_KIND, [this.actorState, this.criticState], {
      seed: this.config.seed,
      generation_batch_size: this.config.generationBatchSize,
    });
    const step = Number(metadata.step);
    if (!Number.isInteger(step) || step < 0 || step > this.totalSteps) {
      throw new Error(`trainer state step ${metadata.step} is not within 0..${this.totalSteps}`);
    }
    this.step = step;
    this.rng = Rng.fromState(JSON.parse(metadata.rng) as RngState);
    this.klCtl = Number(metadata.kl_ctl);
    this.recent = JSON.parse(metadata.recent);
  }

  dispose(): void {
    this.actorState.dispose();
    this.criticState.dispose();
  }
}

type Minibatch = {
  ids: tf.Tensor2D;
  targets: Int32Array;
  mask: tf.Tensor2D;
  oldLogp: tf.Tensor2D;
  oldValues: tf.Tensor2D;
  advantages: tf.Tensor2D;
  returns: tf.Tensor2D;
};

/** Rows [start, start + rows) of the rollout as tensors the caller disposes. */
function minibatch(r: Rollout, start: number, rows: number): Minibatch {
  const from = start * r.length;
  const to = (start + rows) * r.length;
  const grid = (a: Float32Array) => tf.tensor2d(a.subarray(from, to), [rows, r.length]);
  const mb = {
    ids: tf.tensor2d(r.ids.subarray(from, to), [rows, r.length], "int32"),
    mask: grid(r.mask),
    oldLogp: grid(r.oldLogp),
    oldValues: grid(r.oldValues),
    advantages: grid(r.advantages),
    returns: grid(r.returns),
  };
  return { ...mb, targets: r.targets.subarray(from, to) } as Minibatch;
}

function readAndDispose(t: tf.Scalar | undefined): number {
  if (!t) return 0;
  const value = t.dataSync()[0];
  t.dispose();
  return value;
}

/** ema <- beta * ema + (1 - beta) * actor, weight by weight (DeepSpeed-Chat's moving_average). */
/** How step `step`'s rollouts sample their answers. */
export function rolloutSampling(
  config: PpoConfig,
  tokenizer: Tokenizer,
  step: number,
): SampleOptions {
  return {
    maxNewTokens: config.maxAnswerSeqLen,
    temperature: config.temperature,
    topP: config.topP,
    seed: `ppo-rollout:${config.seed}:${step}`,
    eosId: tokenizer.eosId,
    // A rollout that writes a role token would forge the next turn for the reward model.
    endIds: Object.values(tokenizer.chatTokens ?? {}),
    padId: tokenizer.padId,
    useCache: config.useKvCache ?? true,
  };
}

export function emaUpdate(ema: GPT, actor: GPT, beta: number): void {
  // The EMA follows the weights the actor computes with: LoRA adapters merged in.
  const merge = actor.hasLora && !actor.loraMerged;
  if (merge) actor.mergeLora();
  try {
    const actorWeights = actor.namedWeights();
    tf.tidy(() => {
      for (const [name, e] of ema.namedWeights()) {
        const a = actorWeights.get(name);
        if (!a) throw new Error(`EMA: the actor has no ${name}`);
        e.assign(tf.add(tf.mul(beta, e), tf.mul(1 - beta, a)));
      }
    });
  } finally {
    if (merge) actor.unmergeLora();
  }
}

function validatePpoConfig(config: PpoConfig, actor: GPT): void {
  const positiveInts = [
    "epochs",
    "generationBatchSize",
    "trainingBatchSize",
    "ppoEpochs",
    "maxPromptSeqLen",
    "maxAnswerSeqLen",
  ] as const;
  for (const key of positiveInts) {
    if (!Number.isInteger(config[key]) || config[key] <= 0)
      throw new Error(`PPO config: ${key} must be a positive integer, got ${config[key]}`);
  }
  if (config.maxSteps !== undefined && !(Number.isInteger(config.maxSteps) && config.maxSteps > 0))
    throw new Error(`PPO config: maxSteps must be a positive integer, got ${config.maxSteps}`);
  const context = actor.config.contextLength;
  if (config.maxPromptSeqLen + config.maxAnswerSeqLen > context) {
    throw new Error(
      `PPO config: maxPromptSeqLen + maxAnswerSeqLen (${config.maxPromptSeqLen} + ` +
        `${config.maxAnswerSeqLen}) exceeds the actor's context length ${context}`,
    );
  }
  if (!(config.cliprange > 0) || !(config.cliprangeValue > 0))
    throw new Error("PPO config: cliprange and cliprangeValue must be positive");
  if (!(config.emaBeta >= 0 && config.emaBeta < 1))
    throw new Error(`PPO config: emaBeta must be in [0, 1), got ${config.emaBeta}`);
}

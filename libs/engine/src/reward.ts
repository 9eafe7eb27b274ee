// Reward-model training (step 2 of InstructGPT / DeepSpeed-Chat): a value model scores prompt +
// answer by its value at the answer's last real token (its eos), and learns from ranked pairs with
// the pairwise loss -log sigmoid(r_chosen - r_rejected). A seeded share of the pairs is held out
// and never trained on; evaluations report accuracy (chosen scored above rejected) and the mean
// scores on it. docs/decisions/0005-reward-model-score.md says why the last token, not
// DeepSpeed-Chat's divergence-token average.
import * as tf from "@tensorflow/tfjs";
import type { ChatPrompt } from "./chat";
import { EpochBatches, tokenizeSftExample } from "./data";
import { pairwiseRewardLoss } from "./losses";
import { Rng, type RngState, seededPermutation } from "./rng";
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

/** A ranked pair; `prompt` is a conversation (encodePrompt renders it) or raw text. */
export type PreferencePair = { prompt: ChatPrompt; chosen: string; rejected: string };

export type RewardConfig = {
  /** Steps as Hugging Face's Trainer reads max_steps; absent: `epochs` passes decide. */
  maxSteps?: number;
  epochs: number;
  /** Pairs per step (the model reads twice as many sequences). */
  batchSize: number;
  learningRate: number;
  maxSeqLen: number;
  warmupSteps: number;
  weightDecay: number;
  gradClip: number;
  seed: number;
  /** Share of the pairs held out for evaluation (at least one when there are two or more). */
  evalFraction: number;
  /** Evaluate every this many steps and after the last. */
  evalEvery: number;
  /** LoRA adapters to add to the body and train (absent: every weight trains as it is). */
  lora?: LoraTraining;
  log?: (message: string) => void;
};

export type RewardEvaluation = {
  accuracy: number;
  chosenScore: number;
  rejectedScore: number;
  pairs: number;
};

/** A pair as token ids: prompt + answer + eos, both cut the same way. */
type TokenizedPair = { chosen: number[]; rejected: number[] };

const STATE_KIND = "chatrl.reward-trainer";

export class RewardModelTrainer implements StageTrainer {
  step = 0;
  readonly totalSteps: number;
  readonly truncated: number;
  readonly dropped: number;
  readonly trainPairs: number;
  readonly evalPairs: number;
  private readonly model: ValueModel;
  private readonly config: RewardConfig;
  private readonly padId: number;
  private readonly train: TokenizedPair[];
  private readonly held: TokenizedPair[];
  private readonly batches: EpochBatches<TokenizedPair>;
  private readonly state: TrainState;
  private rng: Rng;
  private lastEval?: RewardEvaluation;

  constructor(
    model: ValueModel,
    tokenizer: Tokenizer,
    pairs: readonly PreferencePair[],
    config: RewardConfig,
  ) {
    validateRewardConfig(config, model);
    this.model = model;
    this.config = { ...config };
    this.padId = tokenizer.padId;
    const tokenized: TokenizedPair[] = [];
    let truncated = 0;
    for (const pair of pairs) {
      const chosen = tokenizeSftExample(
        { prompt: pair.prompt, response: pair.chosen },
        tokenizer,
        config.maxSeqLen,
      );
      const rejected = tokenizeSftExample(
        { prompt: pair.prompt, response: pair.rejected },
        tokenizer,
        config.maxSeqLen,
      );
      if (!chosen || !rejected) continue;
      if (chosen.truncated || rejected.truncated) truncated++;
      tokenized.push({ chosen: chosen.ids, rejected: rejected.ids });
    }
    this.truncated = truncated;
    this.dropped = pairs.length - tokenized.length;
    if (tokenized.length === 0) {
      throw new Error(`no preference pair fits max_seq_len ${config.maxSeqLen}`);
    }
    const order = seededPermutation(tokenized.length, `reward-holdout:${config.seed}`);
    const held =
      tokenized.length >= 2 ? Math.max(1, Math.round(tokenized.length * config.evalFraction)) : 0;
    this.held = order.slice(0, held).map((i) => tokenized[i]);
    this.train = order.slice(held).map((i) => tokenized[i]);
    this.trainPairs = this.train.length;
    this.evalPairs = this.held.length;
    this.totalSteps = stepsFor(config, this.train.length, config.batchSize);
    this.batches = new EpochBatches(this.train, config.batchSize, `reward-epoch:${config.seed}`);
    this.rng = Rng.create(`reward:${config.seed}`);
    this.state = new TrainState(
      "",
      trainableWeights(model, config.lora, config.seed),
      { ...config, totalSteps: this.totalSteps, loraLearningRate: config.lora?.learningRate },
      config.log,
      model.body.hasLora ? model.body : undefined,
    );
  }

  async trainStep(): Promise<StepReport> {
    if (this.step >= this.totalSteps)
      throw new Error(`reward training is finished: all ${this.totalSteps} steps are done`);
    const pairs = this.batches.at(this.step);
    let accuracy: tf.Scalar | undefined;
    const { loss, gradNorm, lr } = this.state.update(() => {
      const { chosen, rejected } = this.score(pairs, true);
      accuracy = tf.keep(tf.mean(tf.cast(tf.greater(chosen, rejected), "float32")) as tf.Scalar);
      return pairwiseRewardLoss(chosen, rejected);
    });
    const trainAccuracy = (accuracy as unknown as tf.Scalar).dataSync()[0];
    (accuracy as unknown as tf.Scalar).dispose();
    this.step += 1;
    const metrics: Record<string, number> = {
      loss,
      lr,
      grad_norm: gradNorm,
      accuracy: trainAccuracy,
    };
    if (
      this.held.length > 0 &&
      (this.step % this.config.evalEvery === 0 || this.step === this.totalSteps)
    ) {
      const e = this.evaluate();
      metrics.eval_accuracy = e.accuracy;
      metrics.eval_chosen_score = e.chosenScore;
      metrics.eval_rejected_score = e.rejectedScore;
    }
    const tokens = pairs.reduce((n, p) => n + p.chosen.length + p.rejected.length - 2, 0);
    return { step: this.step, tokens, metrics };
  }

  /** Accuracy and mean scores on the held-out pairs (no tape, no dropout). */
  evaluate(): RewardEvaluation {
    let correct = 0;
    let chosenSum = 0;
    let rejectedSum = 0;
    for (let start = 0; start < this.held.length; start += this.config.batchSize) {
      const pairs = this.held.slice(start, start + this.config.batchSize);
      const [c, r] = tf.tidy(() => {
        const { chosen, rejected } = this.score(pairs, false);
        return [chosen.dataSync(), rejected.dataSync()];
      });
      for (let i = 0; i < pairs.length; i++) {
        if (c[i] > r[i]) correct++;
        chosenSum += c[i];
        rejectedSum += r[i];
      }
    }
    const n = this.held.length;
    this.lastEval = {
      accuracy: correct / n,
      chosenScore: chosenSum / n,
      rejectedScore: rejectedSum / n,
      pairs: n,
    };
    return this.lastEval;
  }

  /** The latest evaluation as the stage reports it. */
  summary(): Record<string, number> {
    const e = this.lastEval;
    return e
      ? { accuracy: e.accuracy, chosen_score: e.chosenScore, rejected_score: e.rejectedScore }
      : {};
  }

  /** Scores of chosen and rejected answers, read in one batch [2B, T] (chosen rows first). */
  private score(pairs: readonly TokenizedPair[], training: boolean) {
    const sequences = [...pairs.map((p) => p.chosen), ...pairs.map((p) => p.rejected)];
    const length = Math.max(...sequences.map((s) => s.length));
    const ids = new Int32Array(sequences.length * length).fill(this.padId);
    for (const [b, s] of sequences.entries()) ids.set(s, b * length);
    const input = tf.tensor2d(ids, [sequences.length, length], "int32");
    const scores = this.model.scores(
      input,
      sequences.map((s) => s.length - 1),
      { training, rng: this.rng },
    ); // [2B]
    const b = pairs.length;
    return {
      chosen: scores.slice(0, b) as tf.Tensor1D,
      rejected: scores.slice(b, b) as tf.Tensor1D,
    };
  }

  async exportState(): Promise<Uint8Array> {
    return encodeTrainerState(STATE_KIND, [this.state], {
      step: String(this.step),
      rng: JSON.stringify(this.rng.exportState()),
      last_eval: JSON.stringify(this.lastEval ?? null),
      seed: String(this.config.seed),
      batch_size: String(this.config.batchSize),
    });
  }

  async importState(bytes: Uint8Array): Promise<void> {
    const metadata = decodeTrainerState(bytes, STATE_KIND, [this.state], {
      seed: this.config.seed,
      batch_size: this.config.batchSize,
    });
    const step = Number(metadata.step);
    if (!Number.isInteger(step) || step < 0 || step > this.totalSteps) {
      throw new Error(`trainer state step ${metadata.step} is not within 0..${this.totalSteps}`);
    }
    this.step = step;
    this.rng = Rng.fromState(JSON.parse(metadata.rng) as RngState);
    this.lastEval = JSON.parse(metadata.last_eval) ?? undefined;
  }

  dispose(): void {
    this.state.dispose();
  }
}

function validateRewardConfig(config: RewardConfig, model: ValueModel): void {
  for (const key of ["epochs", "batchSize", "maxSeqLen", "evalEvery"] as const) {
    if (!Number.isInteger(config[key]) || config[key] <= 0)
      throw new Error(`reward config: ${key} must be a positive integer, got ${config[key]}`);
  }
  if (config.maxSteps !== undefined && !(Number.isInteger(config.maxSteps) && config.maxSteps > 0))
    throw new Error(`reward config: maxSteps must be a positive integer, got ${config.maxSteps}`);
  if (!(config.evalFraction >= 0 && config.evalFraction < 1))
    throw new Error(`reward config: evalFraction must be in [0, 1), got ${config.evalFraction}`);
  if (config.maxSeqLen > model.config.contextLength) {
    throw new Error(
      `reward config: maxSeqLen ${config.maxSeqLen} exceeds the model's context length ${model.config.contextLength}`,
    );
  }
}

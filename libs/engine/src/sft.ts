// Supervised fine-tuning (step 1 of InstructGPT / DeepSpeed-Chat): next-token loss on the
// response tokens of prompt + response + eos examples, AdamW, warmup + cosine schedule,
// global-norm clipping. Resumable exactly from exportState().
import * as tf from "@tensorflow/tfjs";
import {
  buildSftBatch,
  EpochBatches,
  type SftBatch,
  type SftExample,
  type TokenizedExample,
  tokenizeSftExamples,
} from "./data";
import type { GPT } from "./model";
import { crossEntropy } from "./ops";
import { Rng, type RngState } from "./rng";
import type { Tokenizer } from "./tokenizer";
import {
  decodeTrainerState,
  encodeTrainerState,
  type LoraTraining,
  TrainState,
  trainableWeights,
} from "./train-state";
import type { StageTrainer, StepReport } from "./trainer";

export type SftConfig = {
  /**
   * Optimizer steps, as Hugging Face's Trainer reads max_steps: when given it is the number of
   * steps (the examples repeat as needed); when absent, `epochs` passes decide.
   */
  maxSteps?: number;
  batchSize: number;
  /** Peak learning rate, reached at the end of warmup. */
  learningRate: number;
  /** Longest example in tokens (prompt + response + eos); at most the model's context length. */
  maxSeqLen: number;
  /** Passes over the examples when maxSteps is absent. */
  epochs: number;
  warmupSteps: number;
  weightDecay: number;
  /** Global gradient-norm limit; 0 disables clipping. */
  gradClip: number;
  seed: number;
  /** LoRA adapters to add and train (absent: every weight trains as it is). */
  lora?: LoraTraining;
  /** Receives set-up notes (parameter groups); default: silent. */
  log?: (message: string) => void;
};

/** Steps of a trainer: max_steps when given, else enough batches for `epochs` passes over n items. */
export function stepsFor(
  config: { maxSteps?: number; epochs: number },
  items: number,
  batchSize: number,
): number {
  return config.maxSteps ?? Math.max(1, Math.ceil((config.epochs * items) / batchSize));
}

const STATE_KIND = "chatrl.sft-trainer";

export class SFTTrainer implements StageTrainer {
  /** Optimizer steps done. */
  step = 0;
  readonly totalSteps: number;
  /** Examples whose response end was cut, and examples dropped because their prompt did not fit. */
  readonly truncated: number;
  readonly dropped: number;
  private readonly model: GPT;
  private readonly config: SftConfig;
  private readonly examples: TokenizedExample[];
  private readonly padId: number;
  private readonly state: TrainState;
  /** Dropout seeds; its state is part of exportState so a resumed run drops the same units. */
  private rng: Rng;
  private readonly batches: EpochBatches<TokenizedExample>;

  constructor(
    model: GPT,
    tokenizer: Tokenizer,
    examples: readonly SftExample[],
    config: SftConfig,
  ) {
    validateSftConfig(config, model);
    if (examples.length === 0) throw new Error("SFT needs at least one example");
    if (tokenizer.vocabSize > model.config.vocabSize) {
      throw new Error(
        `tokenizer has ${tokenizer.vocabSize} ids but the model only ${model.config.vocabSize}`,
      );
    }
    this.model = model;
    this.config = { ...config };
    this.padId = tokenizer.padId;
    const tokenized = tokenizeSftExamples(examples, tokenizer, config.maxSeqLen);
    if (tokenized.examples.length === 0) {
      throw new Error(
        `no SFT example fits max_seq_len ${config.maxSeqLen}: all ${examples.length} prompts are longer`,
      );
    }
    this.examples = tokenized.examples;
    this.truncated = tokenized.truncated;
    this.dropped = tokenized.dropped;
    this.totalSteps = stepsFor(config, this.examples.length, config.batchSize);
    this.batches = new EpochBatches(this.examples, config.batchSize, `sft-epoch:${config.seed}`);
    this.rng = Rng.create(`sft:${config.seed}`);
    this.state = new TrainState(
      "",
      trainableWeights(model, config.lora, config.seed),
      { ...config, totalSteps: this.totalSteps, loraLearningRate: config.lora?.learningRate },
      config.log,
      model.hasLora ? model : undefined,
    );
  }

  /** One optimizer step on the next batch; every tensor it makes is released. */
  async trainStep(): Promise<StepReport> {
    if (this.step >= this.totalSteps)
      throw new Error(`SFT is finished: all ${this.totalSteps} steps are done`);
    const batch = this.batchAt(this.step);
    const { loss, gradNorm, lr } = this.state.update(() => this.loss(batch));
    this.step += 1;
    return { step: this.step, tokens: batch.tokens, metrics: { loss, lr, grad_norm: gradNorm } };
  }

  /** Mean next-token cross-entropy over the response tokens of a batch. */
  private loss(batch: SftBatch): tf.Scalar {
    const { batchSize, length } = batch;
    const vocab = this.model.config.vocabSize;
    const inputs = tf.tensor2d(batch.inputs, [batchSize, length], "int32");
    const logits = this.model.forward(inputs, { training: true, rng: this.rng }); // [B, T, V]
    const flat = logits.reshape([batchSize * length, vocab]) as tf.Tensor2D; // [B*T, V]
    const nll = crossEntropy(flat, tf.tensor1d(batch.targets, "int32")); // [B*T]
    const mask = tf.tensor1d(batch.lossMask, "float32");
    const trained = Math.max(
      1,
      batch.lossMask.reduce((a, b) => a + b, 0),
    );
    return tf.div(tf.sum(tf.mul(nll, mask)), trained) as tf.Scalar;
  }

  /** The examples of a step, padded into one batch. */
  private batchAt(step: number): SftBatch {
    return buildSftBatch(this.batches.at(step), this.padId);
  }

  /** Optimizer moments (torch names exp_avg.<weight>, exp_avg_sq.<weight>), step and RNG state. */
  async exportState(): Promise<Uint8Array> {
    return encodeTrainerState(STATE_KIND, [this.state], {
      step: String(this.step),
      rng: JSON.stringify(this.rng.exportState()),
      seed: String(this.config.seed),
      batch_size: String(this.config.batchSize),
    });
  }

  /** Continues from exportState() bytes: the next trainStep is the one the exporter would have taken. */
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
  }

  /** Releases the optimizer state. The model stays owned by the caller. */
  dispose(): void {
    this.state.dispose();
  }
}

function validateSftConfig(config: SftConfig, model: GPT): void {
  const positiveInts = ["batchSize", "maxSeqLen", "epochs"] as const;
  if (config.maxSteps !== undefined && !(Number.isInteger(config.maxSteps) && config.maxSteps > 0))
    throw new Error(`SFT config: maxSteps must be a positive integer, got ${config.maxSteps}`);
  for (const key of positiveInts) {
    if (!Number.isInteger(config[key]) || config[key] <= 0) {
      throw new Error(`SFT config: ${key} must be a positive integer, got ${config[key]}`);
    }
  }
  if (!Number.isInteger(config.warmupSteps) || config.warmupSteps < 0) {
    throw new Error(
      `SFT config: warmupSteps must be a non-negative integer, got ${config.warmupSteps}`,
    );
  }
  if (!(config.learningRate > 0))
    throw new Error(`SFT config: learningRate must be positive, got ${config.learningRate}`);
  if (!(config.weightDecay >= 0))
    throw new Error(`SFT config: weightDecay must be >= 0, got ${config.weightDecay}`);
  if (!(config.gradClip >= 0))
    throw new Error(`SFT config: gradClip must be >= 0, got ${config.gradClip}`);
  if (!Number.isFinite(config.seed))
    throw new Error(`SFT config: seed must be a number, got ${config.seed}`);
  if (config.maxSeqLen > model.config.contextLength) {
    throw new Error(
      `SFT config: maxSeqLen ${config.maxSeqLen} exceeds the model's context length ${model.config.contextLength}`,
    );
  }
}

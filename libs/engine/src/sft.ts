// Supervised fine-tuning (step 1 of InstructGPT / DeepSpeed-Chat): next-token loss on the
// response tokens of prompt + response + eos examples, AdamW, warmup + cosine schedule,
// global-norm clipping. Resumable exactly from exportState().
import * as tf from "@tensorflow/tfjs";
import { tensorsToStored } from "./checkpoint";
import {
  buildSftBatch,
  type SftBatch,
  type SftExample,
  type TokenizedExample,
  tokenizeSftExample,
} from "./data";
import type { GPT } from "./model";
import { crossEntropy } from "./ops";
import { AdamW, clipByGlobalNorm, lrAt } from "./optim";
import { Rng, type RngState, seededPermutation } from "./rng";
import { decodeSafetensors, encodeSafetensors } from "./safetensors";
import type { Tokenizer } from "./tokenizer";

export type SftConfig = {
  maxSteps: number;
  batchSize: number;
  /** Peak learning rate, reached at the end of warmup. */
  learningRate: number;
  /** Longest example in tokens (prompt + response + eos); at most the model's context length. */
  maxSeqLen: number;
  /** Passes over the examples; training stops at maxSteps or after this many, whichever is first. */
  epochs: number;
  warmupSteps: number;
  weightDecay: number;
  /** Global gradient-norm limit; 0 disables clipping. */
  gradClip: number;
  seed: number;
  /** Receives set-up notes (parameter groups); default: silent. */
  log?: (message: string) => void;
};

export type SftStepResult = {
  /** Optimizer steps done, counting this one. */
  step: number;
  /** Mean cross-entropy over the batch's response tokens. */
  loss: number;
  /** Learning rate used for this step. */
  lr: number;
  /** Real (non-pad) tokens the model read in this step. */
  tokens: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
};

const STATE_KIND = "chatrl.sft-trainer";

export class SFTTrainer {
  /** Optimizer steps done. */
  step = 0;
  readonly totalSteps: number;
  private readonly model: GPT;
  private readonly config: SftConfig;
  private readonly examples: TokenizedExample[];
  private readonly padId: number;
  private readonly optimizer: AdamW;
  /** HF weight name of each trainable variable, by the variable's tfjs name (which gradients use). */
  private readonly nameOf = new Map<string, string>();
  private readonly variables: tf.Variable[];
  /** Dropout seeds; its state is part of exportState so a resumed run drops the same units. */
  private rng: Rng;
  private readonly epochOrders = new Map<number, number[]>();

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
    this.examples = examples.map((e) => tokenizeSftExample(e, tokenizer, config.maxSeqLen));
    const stepsPerEpochs = Math.ceil((config.epochs * this.examples.length) / config.batchSize);
    this.totalSteps = Math.min(config.maxSteps, stepsPerEpochs);
    this.rng = Rng.create(`sft:${config.seed}`);

    const weights = model.namedWeights();
    this.variables = [...weights.values()];
    for (const [name, variable] of weights) this.nameOf.set(variable.name, name);
    this.optimizer = new AdamW(weights, { weightDecay: config.weightDecay });
    const { decay, noDecay } = this.optimizer.groups();
    config.log?.(
      `AdamW: ${decay.tensors} decayed tensors (${decay.parameters} parameters), ` +
        `${noDecay.tensors} non-decayed tensors (${noDecay.parameters} parameters)`,
    );
  }

  /** One optimizer step on the next batch. Synchronous tensor work; every tensor it makes is released. */
  trainStep(): SftStepResult {
    if (this.step >= this.totalSteps)
      throw new Error(`SFT is finished: all ${this.totalSteps} steps are done`);
    const batch = this.batchAt(this.step);
    const lr = lrAt(this.step, {
      peak: this.config.learningRate,
      warmupSteps: this.config.warmupSteps,
      totalSteps: this.totalSteps,
      minRatio: 0.1,
    });
    const [loss, gradNorm] = tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => this.loss(batch), this.variables);
      const named = new Map<string, tf.Tensor>();
      for (const [varName, g] of Object.entries(grads))
        named.set(this.nameOf.get(varName) as string, g);
      const clipped = clipByGlobalNorm(named, this.config.gradClip);
      try {
        this.optimizer.apply(clipped.grads, lr);
        return [value.dataSync()[0], clipped.norm.dataSync()[0]];
      } finally {
        // Kept for us by clipByGlobalNorm, so tidy would not release them, not even on a throw.
        for (const g of [...clipped.grads.values(), clipped.norm]) g.dispose();
      }
    });
    this.step += 1;
    return { step: this.step, loss, lr, tokens: batch.tokens, gradNorm };
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

  /**
   * The examples of a step: a pure function of (seed, step) so that a resumed trainer sees the
   * same batches. Each epoch is its own seeded permutation; a batch may straddle two epochs.
   */
  private batchAt(step: number): SftBatch {
    const n = this.examples.length;
    const end = Math.min((step + 1) * this.config.batchSize, this.config.epochs * n);
    const picked: TokenizedExample[] = [];
    for (let k = step * this.config.batchSize; k < end; k++) {
      picked.push(this.examples[this.epochOrder(Math.floor(k / n))[k % n]]);
    }
    return buildSftBatch(picked, this.padId);
  }

  private epochOrder(epoch: number): number[] {
    let order = this.epochOrders.get(epoch);
    if (!order) {
      order = seededPermutation(this.examples.length, `sft-epoch:${this.config.seed}:${epoch}`);
      this.epochOrders.clear(); // only the current epoch (and the next) are ever needed
      this.epochOrders.set(epoch, order);
    }
    return order;
  }

  /**
   * Optimizer moments (safetensors, torch names exp_avg.<weight>, exp_avg_sq.<weight>) with step
   * and RNG state in the metadata. The weights themselves are saved with saveModel().
   */
  async exportState(): Promise<Uint8Array> {
    const tensors = await tensorsToStored(this.optimizer.stateTensors());
    return encodeSafetensors(tensors, {
      kind: STATE_KIND,
      step: String(this.step),
      optimizer_step: String(this.optimizer.step),
      rng: JSON.stringify(this.rng.exportState()),
      seed: String(this.config.seed),
      batch_size: String(this.config.batchSize),
    });
  }

  /** Continues from exportState() bytes: the next trainStep is the one the exporter would have taken. */
  async importState(bytes: Uint8Array): Promise<void> {
    const { tensors, metadata } = decodeSafetensors(bytes);
    if (metadata.kind !== STATE_KIND)
      throw new Error("not an SFT trainer state (metadata kind is missing or different)");
    for (const [key, ours] of [
      ["seed", this.config.seed],
      ["batch_size", this.config.batchSize],
    ] as const) {
      if (Number(metadata[key]) !== ours) {
        throw new Error(
          `trainer state was saved with ${key} ${metadata[key]}, this trainer has ${ours}`,
        );
      }
    }
    const step = Number(metadata.step);
    if (!Number.isInteger(step) || step < 0 || step > this.totalSteps) {
      throw new Error(`trainer state step ${metadata.step} is not within 0..${this.totalSteps}`);
    }
    const rng = Rng.fromState(JSON.parse(metadata.rng) as RngState);
    const asTensors = new Map<string, tf.Tensor>();
    try {
      for (const [name, t] of tensors) asTensors.set(name, tf.tensor(t.data, t.shape, t.dtype));
      this.optimizer.loadState(asTensors, Number(metadata.optimizer_step));
    } finally {
      for (const t of asTensors.values()) t.dispose();
    }
    this.step = step;
    this.rng = rng;
  }

  /** Releases the optimizer state. The model stays owned by the caller. */
  dispose(): void {
    this.optimizer.dispose();
  }
}

function validateSftConfig(config: SftConfig, model: GPT): void {
  const positiveInts = ["maxSteps", "batchSize", "maxSeqLen", "epochs"] as const;
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

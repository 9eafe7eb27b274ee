// Every knob of the model in one object. Presets are named configs, not scattered constants.

export type ModelConfig = {
  /** Rows of the token embedding. Must cover the tokenizer's ids (bytes + special tokens). */
  vocabSize: number;
  /** Longest sequence the model can see; learned position embeddings have one row per position. */
  contextLength: number;
  /** Width of the residual stream (C). */
  dModel: number;
  /** Transformer blocks. */
  nLayers: number;
  /** Attention heads; dModel must divide evenly among them. */
  nHeads: number;
  /** Hidden width of the MLP as a multiple of dModel. */
  mlpRatio: number;
  /** Dropout on embeddings and residual branches, only while training. */
  dropout: number;
  /** "layernorm" (GPT-2, OPT) or "rmsnorm" (Llama: no mean subtraction, no bias). */
  norm: "layernorm" | "rmsnorm";
  /** How positions are encoded; "learned" is GPT-2's wpe table. */
  position: "learned";
  /** MLP non-linearity: "gelu" (GPT-2's tanh approximation) or "relu" (OPT). */
  activation: "gelu" | "relu";
  /** Share the token embedding with the output head (GPT-2 does; saves V*C parameters). */
  tiedEmbeddings: boolean;
  /** Added to the variance in the norms for numerical safety. */
  layerNormEps: number;
  /**
   * The tokenizer and chat template the model reads (saved with it, so a checkpoint is always
   * served as it was trained). Absent: "byte-v1", the format of checkpoints saved before it was
   * recorded.
   */
  tokenizer?: TokenizerVersion;
};

/**
 * "byte-v2": bytes, <|endoftext|>, <|pad|> and the chat roles as special tokens (vocabulary 262).
 * "byte-v1": bytes, <|endoftext|>, <|pad|> (258); the chat template spells the roles in bytes.
 */
export type TokenizerVersion = "byte-v1" | "byte-v2";
export const TOKENIZER_VERSIONS: readonly TokenizerVersion[] = ["byte-v1", "byte-v2"];
/** The version new models get. */
export const CURRENT_TOKENIZER: TokenizerVersion = "byte-v2";

/** 256 byte values + <|endoftext|> + <|pad|> + 4 chat tokens: the ByteTokenizer's vocabulary. */
export const BYTE_VOCAB_SIZE = 262;
/** The byte-v1 vocabulary: 256 byte values + <|endoftext|> + <|pad|>. */
export const LEGACY_BYTE_VOCAB_SIZE = 258;

const tiny: ModelConfig = {
  vocabSize: BYTE_VOCAB_SIZE, // models trained from scratch use the byte tokenizer
  tokenizer: CURRENT_TOKENIZER, // chat roles as special tokens
  contextLength: 128, // enough for a short chat turn in bytes
  dModel: 64, // small enough that a test trains 40 steps in a few seconds on the JS backend
  nLayers: 2,
  nHeads: 2, // head size 32
  mlpRatio: 4, // GPT-2's 4x MLP
  dropout: 0.0, // tiny models and short runs underfit; dropout would only slow learning
  norm: "layernorm",
  position: "learned",
  activation: "gelu",
  tiedEmbeddings: true, // GPT-2 ties wte and the LM head
  layerNormEps: 1e-5, // GPT-2's value
};

const small: ModelConfig = {
  ...tiny,
  contextLength: 256, // room for a prompt and an answer of a few sentences in bytes
  dModel: 256,
  nLayers: 4,
  nHeads: 4, // head size 64, as in GPT-2
  dropout: 0.1, // long enough runs to overfit small datasets
};

/**
 * The shape used by the performance probe of issue 3: byte vocabulary (256, no special
 * tokens, so it is for benchmarks rather than chat training), ReLU MLP x4, tied embeddings.
 */
const probe: ModelConfig = {
  vocabSize: 256,
  contextLength: 128,
  dModel: 256,
  nLayers: 4,
  nHeads: 4,
  mlpRatio: 4,
  dropout: 0.0, // a probe measures speed; dropout would add noise ops
  norm: "layernorm",
  position: "learned",
  activation: "relu",
  tiedEmbeddings: true,
  layerNormEps: 1e-5,
};

export const MODEL_PRESETS = { tiny, small, probe } as const satisfies Record<string, ModelConfig>;

export type ModelPreset = keyof typeof MODEL_PRESETS;

/** Throws an error naming the first knob that makes no sense. */
export function validateModelConfig(config: ModelConfig): void {
  const positiveInts = ["vocabSize", "contextLength", "dModel", "nLayers", "nHeads"] as const;
  for (const key of positiveInts) {
    const value = config[key];
    if (!Number.isInteger(value) || value <= 0) {
      throw new Error(`model config: ${key} must be a positive integer, got ${value}`);
    }
  }
  if (config.dModel % config.nHeads !== 0) {
    throw new Error(
      `model config: dModel (${config.dModel}) must be divisible by nHeads (${config.nHeads})`,
    );
  }
  if (!(config.mlpRatio > 0) || !Number.isInteger(config.mlpRatio * config.dModel)) {
    throw new Error(
      `model config: mlpRatio * dModel must be a positive integer, got ${config.mlpRatio}`,
    );
  }
  if (!(config.dropout >= 0 && config.dropout < 1)) {
    throw new Error(`model config: dropout must be in [0, 1), got ${config.dropout}`);
  }
  if (config.norm !== "layernorm" && config.norm !== "rmsnorm") {
    throw new Error(`model config: norm must be "layernorm" or "rmsnorm", got ${config.norm}`);
  }
  if (config.position !== "learned") {
    throw new Error(`model config: position must be "learned", got ${config.position}`);
  }
  if (config.activation !== "gelu" && config.activation !== "relu") {
    throw new Error(`model config: activation must be "gelu" or "relu", got ${config.activation}`);
  }
  if (typeof config.tiedEmbeddings !== "boolean") {
    throw new Error("model config: tiedEmbeddings must be a boolean");
  }
  if (config.tokenizer !== undefined && !TOKENIZER_VERSIONS.includes(config.tokenizer)) {
    throw new Error(
      `model config: tokenizer must be one of ${TOKENIZER_VERSIONS.join(", ")}, got ${config.tokenizer}`,
    );
  }
  if (!(config.layerNormEps > 0)) {
    throw new Error(`model config: layerNormEps must be positive, got ${config.layerNormEps}`);
  }
}

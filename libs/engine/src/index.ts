// @chatrl/engine: the RLHF engine on TensorFlow.js. No Redis, no Postgres, no HTTP.
export { BACKEND_ORDER, type BackendInfo, type BackendName, initBackend, tf } from "./backend";
export {
  ASSISTANT_MARKER,
  CHAT_STOP_STRINGS,
  type ChatMessage,
  type ChatPrompt,
  chatStopStrings,
  encodePrompt,
  renderChatPrompt,
  rowToPpoPrompt,
  rowToPreferencePairs,
  rowToPretrainingExamples,
  rowToSftExamples,
} from "./chat";
export {
  loadModel,
  loadValueModel,
  loadWeights,
  MODEL_CONFIG_KEY,
  MODEL_ROLE_KEY,
  type ModelRole,
  type PolicyRole,
  type ValueRole,
  saveModel,
  sha256Hex,
  TOKENIZER_KEY,
  tensorsToStored,
} from "./checkpoint";
export {
  BYTE_VOCAB_SIZE,
  CURRENT_TOKENIZER,
  LEGACY_BYTE_VOCAB_SIZE,
  MODEL_PRESETS,
  type ModelConfig,
  type ModelPreset,
  TOKENIZER_VERSIONS,
  type TokenizerVersion,
  validateModelConfig,
} from "./config";
export {
  type BlendSource,
  blendDatasets,
  buildSftBatch,
  type SftBatch,
  type SftExample,
  splitForStage,
  type TokenizedExample,
  type TokenizedSet,
  tokenizeSftExample,
  tokenizeSftExamples,
} from "./data";
export {
  type GenerateOptions,
  type GenerateResult,
  generate,
  sampleToken,
  TextStream,
} from "./generate";
export {
  DecodeBatch,
  type DecodeFinish,
  type DecodeRequest,
  DecodeRow,
  type DecodeRowOptions,
  type TokenLogprob,
  tokenLogprob,
} from "./decode-batch";
export {
  autoDecodeDtype,
  type Bf16Kernel,
  type DecodeDtype,
  nativeBf16Kernel,
  setNativeBf16Kernel,
} from "./kernels/index.ts";
export { KVCache } from "./kv-cache";
export { type ForwardOptions, GPT, type LoraConfig } from "./model";
export {
  ADAMW_DEFAULTS,
  AdamW,
  type AdamWConfig,
  clipByGlobalNorm,
  isDecayed,
  type LrSchedule,
  lrAt,
} from "./optim";
export { Rng, type RngState, seededPermutation } from "./rng";
export type { ChatRow, DatasetRow, PreferenceRow, SupervisedRow } from "./rows";
export {
  decodeSafetensors,
  encodeSafetensors,
  type Safetensors,
  type StoredTensor,
  type TensorDtype,
} from "./safetensors";
export { type SftConfig, SFTTrainer, stepsFor } from "./sft";
export {
  decodeTrainerState,
  encodeTrainerState,
  isLoraWeight,
  type LoraTraining,
  TrainState,
  type TrainStateConfig,
  trainableWeights,
} from "./train-state";
export type { StageTrainer, StepReport } from "./trainer";
export { V_HEAD, ValueModel } from "./value-model";
export {
  ByteTokenizer,
  type ChatTokens,
  incompleteUtf8Tail,
  servingTokenRules,
  type Tokenizer,
  type TokenRules,
  tokenizerFor,
} from "./tokenizer";
export {
  adaptKlCoefficient,
  clippedSurrogateLoss,
  clippedValueLoss,
  gae,
  maskedMean,
  pairwiseRewardLoss,
  tokenRewards,
  whiten,
} from "./losses";
export { makeExperience, type Rollout, tokenLogprobs } from "./experience";
export { HybridEngine, type HybridMode, type RolloutSample } from "./hybrid";
export { emaUpdate, type PpoConfig, type PpoModels, PPOTrainer, rolloutSampling } from "./ppo";
export {
  type PreferencePair,
  type RewardConfig,
  type RewardEvaluation,
  RewardModelTrainer,
} from "./reward";
export {
  applyRepetitionPenalty,
  logSoftmaxAt,
  type SampledRow,
  type SampleOptions,
  sampleTokens,
  type TokenSampling,
} from "./sampler";

export { buildInferenceApp, type InferenceDeps } from "./app.ts";
export { loadRegistryOptions } from "./registry-options.ts";
export { startInferenceServer } from "./server.ts";
export {
  type ChoiceOptions,
  DecodeLoop,
  type GenerationRequest,
  type GenerationResult,
  type LoopEvent,
  type LoopLimits,
  type LoopStats,
  QueueFullError,
  RequestTooLargeError,
} from "./decode-loop.ts";
export { findServedModel, listServedModels, type ServedModel } from "./model-catalog.ts";
export {
  type LoadedModelStats,
  type ModelLease,
  ModelRegistry,
  ModelTooLargeError,
  REGISTRY_DEFAULTS,
  type RegistryEvent,
  type RegistryOptions,
  type RegistryStats,
} from "./model-registry.ts";

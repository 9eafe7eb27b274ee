export { buildInferenceApp, type InferenceDeps } from "./app.ts";
export { startInferenceServer } from "./server.ts";
export type { GenerationResult, SamplingOptions } from "./generation-queue.ts";
export { findServedModel, listServedModels, type ServedModel } from "./model-catalog.ts";
export {
  type ModelLease,
  ModelRegistry,
  type RegistryOptions,
  type RegistryStats,
} from "./model-registry.ts";

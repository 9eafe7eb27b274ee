export { buildHealthApp, type HealthDeps } from "./health.ts";
export { DEFAULT_WORKER_OPTIONS, loadWorkerOptions, type WorkerOptions } from "./options.ts";
export { implementedKinds, PROCESSORS } from "./processors.ts";
export { sftProcessor } from "./sft-stage.ts";
export {
  type CheckpointFile,
  type ProcessorTable,
  type ResumePoint,
  runStageLoop,
  type StageAttempt,
  type StageProcessor,
  type StageSession,
} from "./stage-loop.ts";
export { runStage } from "./stage-runner.ts";
export { type StageCost, StageClock, type StageTotals } from "./stage-clock.ts";
export type { StageContext, StageJob, StageResult } from "./types.ts";
export { type RunningWorker, startWorker, type WorkerDeps } from "./worker.ts";
export { createReconciler, type Reconciler, type ReconcileReport } from "./reconciler.ts";
export {
  DEFAULT_RESILIENCE_OPTIONS,
  loadResilienceOptions,
  type ResilienceOptions,
} from "./resilience-options.ts";

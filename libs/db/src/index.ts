// @chatrl/db: the Prisma client, the migration runner and the repositories (docs/internal-apis.md).
export type { Database, DatabaseConfig } from "./database.ts";
export { ensureDatabaseExists, openDatabase } from "./database.ts";
export { migrate } from "./migrate.ts";
export { newId, randomHex } from "./ids.ts";
export type { IdPrefix } from "./ids.ts";
export type { Db, Page, PageQuery, RunWithStages, StageRow, StageSummary } from "./rows.ts";
export { coalesceReads, groupCalls } from "./coalesce.ts";
export type { DatasetFacts, DatasetFactsLookup, DatasetLengths } from "./datasets.ts";
export {
  createDataset,
  datasetFactsCache,
  datasetLengths,
  getDataset,
  getDatasets,
  listDatasets,
  loadDatasetRows,
} from "./datasets.ts";
export type { NewRun } from "./runs.ts";
export {
  cancelRun,
  createRun,
  createRuns,
  failUnqueuedRun,
  findRunByIdempotencyKey,
  getRun,
  listRuns,
  markRunFailed,
} from "./runs.ts";
export type { StageData, StageOutcome, StageProgress } from "./stages.ts";
export {
  finishStage,
  getStage,
  getStageByRunAndKind,
  recordStageData,
  recordStageProgress,
  startStage,
} from "./stages.ts";
export type {
  CheckpointFile,
  CheckpointPart,
  CheckpointSet,
  NewCheckpoint,
  NewCheckpoints,
  ServableCheckpoint,
} from "./checkpoints.ts";
export {
  CHUNK_BYTES,
  checkpointsAtStep,
  getCheckpoint,
  latestCheckpoint,
  latestCheckpointSet,
  listCheckpoints,
  listServableCheckpoints,
  newestCheckpointPerRole,
  readCheckpointPart,
  saveCheckpoint,
  saveCheckpoints,
} from "./checkpoints.ts";
export type { MetricRow } from "./metrics.ts";
export { addMetrics, listMetrics } from "./metrics.ts";
export type { RunEventRow } from "./events.ts";
export { addEvent, listEvents } from "./events.ts";
export type { CostGroup, CostRow, DayRange } from "./dashboard.ts";
export { costSummary } from "./dashboard.ts";
export type { PhaseSeconds, StageTiming, TimeFilter, TimeRow } from "./timing.ts";
export { stageTimings, timeSummary } from "./timing.ts";
export * from "./generated/prisma/client.ts";
export type { ApiKeyRow } from "./api-keys.ts";
export {
  createApiKey,
  deleteApiKey,
  hasApiKeys,
  hashApiKey,
  isStoredApiKey,
  listApiKeys,
  API_KEY_CACHE_MS,
  storedApiKeys,
} from "./api-keys.ts";
export { unfinishedRuns, withAdvisoryLock } from "./reconcile.ts";

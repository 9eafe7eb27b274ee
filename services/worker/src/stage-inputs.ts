// What any stage trains from: its share of the run's datasets and the models it starts with (a
// preset or a checkpoint of Postgres).
import {
  type DatasetRow,
  datasetSplit,
  type RunSpec,
  STAGE_ORDER,
  type StageName,
} from "@chatrl/contracts";
import { getCheckpoint, loadDatasetRows, readCheckpointPart } from "@chatrl/db";
import {
  blendDatasets,
  GPT,
  type LoraTraining,
  loadModel,
  MODEL_PRESETS,
  splitForStage,
} from "@chatrl/engine";
import { UnrecoverableError } from "bullmq";
import type { Prisma } from "./types.ts";

/**
 * The rows of the run's datasets that feed `stage`: each dataset cut by contracts' datasetSplit
 * (data_split among the stages it feeds that the run trains), then the shares blended by weight.
 * Deterministic in the run's seed, so a resumed attempt sees the same rows in the same order.
 */
export async function loadStageRows(
  prisma: Prisma,
  spec: RunSpec,
  stage: StageName,
): Promise<DatasetRow[]> {
  const index = STAGE_ORDER.indexOf(stage) as 0 | 1 | 2;
  const sources = [];
  for (const [i, dataset] of spec.datasets.entries()) {
    const split = datasetSplit(spec, i);
    if (split[index] === 0) continue;
    const rows = (await loadDatasetRows(prisma, dataset.id)) as DatasetRow[];
    sources.push({ rows: splitForStage(rows, split, index, spec.seed), weight: dataset.weight });
  }
  return blendDatasets(sources, spec.seed);
}

/** The run's model as a fresh preset or an earlier checkpoint. */
export async function loadBaseModel(prisma: Prisma, spec: RunSpec): Promise<GPT> {
  if ("preset" in spec.model) {
    const config = MODEL_PRESETS[spec.model.preset];
    if (!config) throw new UnrecoverableError(`unknown model preset "${spec.model.preset}"`);
    return new GPT(config, spec.seed);
  }
  return loadCheckpointModel(prisma, spec.model.checkpoint_id);
}

export async function loadCheckpointModel(prisma: Prisma, checkpointId: string): Promise<GPT> {
  return loadModel(await readModelFile(prisma, checkpointId));
}

/** A checkpoint's model file; an UnrecoverableError saying whether the checkpoint or its file is missing. */
export async function readModelFile(prisma: Prisma, checkpointId: string): Promise<Uint8Array> {
  const bytes = await readCheckpointPart(prisma, checkpointId, "model");
  if (!bytes) {
    const exists = (await getCheckpoint(prisma, checkpointId)) !== null;
    throw new UnrecoverableError(
      exists
        ? `checkpoint ${checkpointId} has no model weights`
        : `checkpoint ${checkpointId} does not exist`,
    );
  }
  return bytes;
}

/**
 * A stage's LoRA settings in the engine's terms; none when lora_dim is 0 (or absent: runs
 * stored before LoRA existed).
 */
export function loraTraining(
  dim: number | undefined,
  moduleName: string,
  onlyOptimize: boolean,
  learningRate: number,
): LoraTraining | undefined {
  return dim ? { dim, moduleName, onlyOptimize, learningRate } : undefined;
}

/** The stage start message's note on a model's LoRA adapters ("" without any). */
export function loraNote(model: GPT, lora: LoraTraining | undefined): string {
  if (!lora || !model.hasLora) return "";
  const weights = [...model.loraWeights().values()];
  const parameters = weights.reduce((n, w) => n + w.size, 0);
  return (
    `; LoRA rank ${lora.dim} on ${weights.length / 2} projections matching "${lora.moduleName}" ` +
    `(${parameters} parameters${lora.onlyOptimize ? ", the only ones trained" : ""})`
  );
}

// Everything the SFT stage trains from: its share of the run's datasets and the model it starts
// with (a preset, a parent checkpoint, or the stage's own last checkpoint when resuming).
import type { DatasetRow, RunSpec } from "@chatrl/contracts";
import { getCheckpoint, loadDatasetRows, readCheckpointPart } from "@chatrl/db";
import {
  blendDatasets,
  GPT,
  loadModel,
  MODEL_PRESETS,
  rowToSftExamples,
  type SftConfig,
  type SftExample,
  splitForStage,
} from "@chatrl/engine";
import { UnrecoverableError } from "bullmq";
import type { Prisma } from "./types.ts";

/** data_split index of the SFT stage (DeepSpeed-Chat's step 1). */
const SFT_SPLIT_INDEX = 0;

/**
 * The stage's examples: each dataset split by data_split (SFT takes part 0), then the parts
 * blended by weight. Deterministic in the run's seed, so a resumed attempt sees the same order.
 */
export async function loadSftExamples(prisma: Prisma, spec: RunSpec): Promise<SftExample[]> {
  const sources = [];
  for (const dataset of spec.datasets) {
    const rows = (await loadDatasetRows(prisma, dataset.id)) as DatasetRow[];
    const share = splitForStage(rows, spec.data_split, SFT_SPLIT_INDEX, spec.seed);
    sources.push({ rows: share, weight: dataset.weight });
  }
  const examples = blendDatasets(sources, spec.seed).flatMap((row) => rowToSftExamples(row));
  if (examples.length === 0) {
    const ids = spec.datasets.map((d) => d.id).join(", ");
    throw new UnrecoverableError(
      `the sft stage has no examples: datasets ${ids} give it 0 rows with data_split ` +
        `[${spec.data_split.join(", ")}]`,
    );
  }
  return examples;
}

/** The model SFT starts from when there is no checkpoint of this stage to resume. */
export async function loadBaseModel(prisma: Prisma, spec: RunSpec): Promise<GPT> {
  if ("preset" in spec.model) {
    const config = MODEL_PRESETS[spec.model.preset];
    if (!config) throw new UnrecoverableError(`unknown model preset "${spec.model.preset}"`);
    return new GPT(config, spec.seed);
  }
  return loadCheckpointModel(prisma, spec.model.checkpoint_id);
}

export async function loadCheckpointModel(prisma: Prisma, checkpointId: string): Promise<GPT> {
  const bytes = await readCheckpointPart(prisma, checkpointId, "model");
  if (!bytes) {
    const exists = (await getCheckpoint(prisma, checkpointId)) !== null;
    throw new UnrecoverableError(
      exists
        ? `checkpoint ${checkpointId} has no model weights`
        : `checkpoint ${checkpointId} does not exist`,
    );
  }
  return loadModel(bytes);
}

export function sftConfig(spec: RunSpec): SftConfig {
  const sft = spec.stages.sft;
  return {
    maxSteps: sft.max_steps,
    batchSize: sft.batch_size,
    learningRate: sft.learning_rate,
    maxSeqLen: sft.max_seq_len,
    epochs: sft.epochs,
    warmupSteps: sft.warmup_steps,
    weightDecay: sft.weight_decay,
    gradClip: sft.grad_clip,
    seed: spec.seed,
  };
}

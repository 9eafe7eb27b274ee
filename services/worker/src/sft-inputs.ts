// What the SFT stage trains from: its examples and its settings in the engine's terms.
import type { RunSpec, SftHyperparameters } from "@chatrl/contracts";
import { rowToSftExamples, type SftConfig, type SftExample } from "@chatrl/engine";
import { UnrecoverableError } from "bullmq";
import { loadStageRows, loraTraining } from "./stage-inputs.ts";
import type { Prisma } from "./types.ts";

/** The stage's examples: the rows routed to sft, each as one example per assistant turn. */
export async function loadSftExamples(prisma: Prisma, spec: RunSpec): Promise<SftExample[]> {
  const rows = await loadStageRows(prisma, spec, "sft");
  const examples = rows.flatMap((row) => rowToSftExamples(row));
  if (examples.length === 0) {
    const ids = spec.datasets.map((d) => d.id).join(", ");
    throw new UnrecoverableError(
      `the sft stage has no examples: datasets ${ids} give it 0 rows with data_split ` +
        `[${spec.data_split.join(", ")}]`,
    );
  }
  return examples;
}

/** The run's sft settings; a run with an sft stage but no settings for it cannot train. */
export function sftSettings(spec: RunSpec): SftHyperparameters {
  const sft = spec.stages.sft;
  if (!sft) throw new UnrecoverableError("the run spec has no stages.sft settings");
  return sft;
}

export function sftConfig(spec: RunSpec): SftConfig {
  const sft = sftSettings(spec);
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
    lora: loraTraining(
      sft.lora_dim,
      sft.lora_module_name,
      sft.only_optimize_lora,
      sft.lora_learning_rate,
    ),
  };
}

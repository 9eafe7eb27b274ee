// A model the inference service can serve, stored the way a finished SFT run leaves it: a run of
// one stage whose final checkpoint holds the file. Tests of serving need many of these.
import { createRun, type Database, saveCheckpoint } from "@chatrl/db";

export type ServedSft = { runId: string; checkpointId: string; modelId: string };

/** `model` is a saveModel file; `config` goes to the checkpoint row (the model's context comes from it). */
export async function saveServedSft(
  prisma: Database["prisma"],
  model: Uint8Array,
  config: unknown,
  name = "served model",
): Promise<ServedSft> {
  const run = await createRun(prisma, { name, spec: {}, stages: [{ kind: "sft", maxSteps: 1 }] });
  const checkpoint = await saveCheckpoint(prisma, {
    runId: run.id,
    stageId: run.stages[0].id,
    step: 1,
    role: "sft",
    final: true,
    config,
    model,
  });
  return { runId: run.id, checkpointId: checkpoint.id, modelId: `run-${run.id}-sft` };
}

// Which checkpoints are served under which model names. A model name always means the newest
// checkpoint of its run and role, final or not: `run-<id>` is the PPO actor as it trains (each
// checkpoint the stage writes every checkpoint_every steps), then its final weights.
import { type Db, newestCheckpointPerRole } from "@chatrl/db";
import { isServedRole, modelIdFor, parseModelId, type ServedRole } from "@chatrl/contracts";

const SERVED_ROLES: readonly ServedRole[] = ["actor", "ema", "sft"];

export type ServedModel = {
  id: string;
  checkpointId: string;
  runId: string;
  role: ServedRole;
  /** The training step the checkpoint was saved at. */
  step: number;
  /** Whether it is the stage's final checkpoint (false while the stage still trains). */
  final: boolean;
  created: number; // unix seconds of the checkpoint
  /** Milliseconds of the checkpoint's creation: which of two checkpoints of a name is newer. */
  createdMs: number;
  /** The model's context length, from the config stored with the checkpoint. */
  contextLength?: number;
};

type CheckpointRow = {
  id: string;
  runId: string;
  role: string;
  step: number;
  final: boolean;
  config: unknown;
  createdAt: Date;
};

function contextLengthOf(config: unknown): number | undefined {
  const value = (config as { contextLength?: unknown } | null)?.contextLength;
  return typeof value === "number" ? value : undefined;
}

function toServed(row: CheckpointRow): ServedModel | null {
  if (!isServedRole(row.role)) return null;
  return {
    id: modelIdFor(row.runId, row.role),
    checkpointId: row.id,
    runId: row.runId,
    role: row.role,
    step: row.step,
    final: row.final,
    created: Math.floor(row.createdAt.getTime() / 1000),
    createdMs: row.createdAt.getTime(),
    contextLength: contextLengthOf(row.config),
  };
}

export async function listServedModels(prisma: Db): Promise<ServedModel[]> {
  const rows = await newestCheckpointPerRole(prisma, SERVED_ROLES);
  return rows.map(toServed).filter((m): m is ServedModel => m !== null);
}

export async function findServedModel(prisma: Db, modelId: string): Promise<ServedModel | null> {
  const parsed = parseModelId(modelId);
  if (!parsed) return null;
  const [row] = await newestCheckpointPerRole(prisma, [parsed.role], parsed.runId);
  return row ? toServed(row) : null;
}

// Which checkpoints are served under which model names. A model name always means the newest
// final checkpoint of its run and role, so a run's new actor is picked up as soon as it lands.
import { type Db, listCheckpoints, listServableCheckpoints } from "@chatrl/db";
import { isServedRole, modelIdFor, parseModelId, type ServedRole } from "@chatrl/contracts";

export type ServedModel = {
  id: string;
  checkpointId: string;
  runId: string;
  role: ServedRole;
  created: number; // unix seconds of the checkpoint
  /** The model's context length, from the config stored with the checkpoint. */
  contextLength?: number;
};

type CheckpointRow = {
  id: string;
  runId: string;
  role: string;
  final: boolean;
  config: unknown;
  createdAt: Date;
};

function contextLengthOf(config: unknown): number | undefined {
  const value = (config as { contextLength?: unknown } | null)?.contextLength;
  return typeof value === "number" ? value : undefined;
}

function newestPerModel(rows: CheckpointRow[]): ServedModel[] {
  const byModel = new Map<string, ServedModel>();
  const newestFirst = [...rows].sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime());
  for (const row of newestFirst) {
    if (!row.final || !isServedRole(row.role)) continue;
    const id = modelIdFor(row.runId, row.role);
    if (byModel.has(id)) continue;
    byModel.set(id, {
      id,
      checkpointId: row.id,
      runId: row.runId,
      role: row.role,
      created: Math.floor(row.createdAt.getTime() / 1000),
      contextLength: contextLengthOf(row.config),
    });
  }
  return [...byModel.values()];
}

export async function listServedModels(prisma: Db): Promise<ServedModel[]> {
  return newestPerModel(await listServableCheckpoints(prisma));
}

export async function findServedModel(prisma: Db, modelId: string): Promise<ServedModel | null> {
  const parsed = parseModelId(modelId);
  if (!parsed) return null;
  const rows = await listCheckpoints(prisma, parsed.runId);
  return newestPerModel(rows).find((model) => model.id === modelId) ?? null;
}

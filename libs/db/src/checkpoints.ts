import { createHash } from "node:crypto";
import type {
  Checkpoint,
  CheckpointRole,
  Prisma,
  Run,
  StageKind,
} from "./generated/prisma/client.ts";
import { newId } from "./ids.ts";
import type { Db } from "./rows.ts";

/** Bytes per checkpoint_chunk row: small enough for one bind parameter, big enough to be few. */
export const CHUNK_BYTES = 4 * 1024 * 1024;

export type CheckpointPart = "model" | "trainer";

export type NewCheckpoint = {
  runId: string;
  stageId: string;
  step: number;
  role: CheckpointRole;
  final: boolean;
  config: unknown;
  /** The safetensors file users download and the inference service loads. */
  model: Uint8Array;
  /** Optimizer state, step and RNG state for resuming; not served. */
  trainer?: Uint8Array;
};

/** One model file of a checkpoint: a PPO checkpoint has several (actor, critic, ema). */
export type CheckpointFile = {
  role: CheckpointRole;
  /** The model config needed to rebuild the network. */
  config: unknown;
  /** The safetensors file. */
  model: Uint8Array;
};

export type NewCheckpoints = {
  runId: string;
  stageId: string;
  step: number;
  final: boolean;
  /** At most one file per role. */
  files: CheckpointFile[];
  /** The trainer state (every optimizer, step, RNG, ...) for resuming, stored on the first file. */
  trainer?: Uint8Array;
};

/** Stores the checkpoint row and its chunks in one transaction. sha256 and bytes describe `model`. */
export async function saveCheckpoint(p: Db, input: NewCheckpoint): Promise<Checkpoint> {
  const { role, config, model, ...rest } = input;
  const [checkpoint] = await saveCheckpoints(p, { ...rest, files: [{ role, config, model }] });
  return checkpoint;
}

/**
 * Stores the files of one checkpoint (a row and chunks each, the trainer part on the first) in
 * ONE transaction: a crash leaves all of them or none, never an actor without its critic. The
 * rows share one createdAt, which tells this set from another saved at the same step.
 * Returns the rows in file order.
 */
export async function saveCheckpoints(p: Db, input: NewCheckpoints): Promise<Checkpoint[]> {
  if (input.files.length === 0) throw new Error("a checkpoint needs at least one model file");
  const roles = input.files.map((f) => f.role);
  const repeated = roles.find((role, i) => roles.indexOf(role) !== i);
  if (repeated) throw new Error(`a checkpoint has one file per role; "${repeated}" is repeated`);
  const createdAt = new Date();
  return p.$transaction(
    async (tx) => {
      const rows: Checkpoint[] = [];
      for (const [i, file] of input.files.entries()) {
        const id = newId("ckpt");
        rows.push(
          await tx.checkpoint.create({
            data: {
              id,
              runId: input.runId,
              stageId: input.stageId,
              step: input.step,
              role: file.role,
              final: input.final,
              config: file.config as Prisma.InputJsonValue,
              sha256: createHash("sha256").update(file.model).digest("hex"),
              bytes: file.model.byteLength,
              createdAt,
            },
          }),
        );
        await writeChunks(tx, id, "model", file.model);
        if (i === 0 && input.trainer) await writeChunks(tx, id, "trainer", input.trainer);
      }
      return rows;
    },
    // Hundreds of MiB take a while to send; Prisma's default allows 5 s.
    { maxWait: 10_000, timeout: 600_000 },
  );
}

async function writeChunks(
  tx: Prisma.TransactionClient,
  checkpointId: string,
  part: CheckpointPart,
  bytes: Uint8Array,
): Promise<void> {
  // One row per statement: a statement carries at most one chunk in memory twice.
  for (let index = 0, offset = 0; offset < bytes.byteLength || index === 0; index++) {
    const data = bytes.slice(offset, offset + CHUNK_BYTES); // a copy of one chunk at a time
    await tx.checkpointChunk.create({ data: { checkpointId, part, index, data } });
    offset += CHUNK_BYTES;
  }
}

/** The stage's checkpoint with the highest step (the newest among equal steps), or null. */
export function latestCheckpoint(p: Db, stageId: string): Promise<Checkpoint | null> {
  return p.checkpoint.findFirst({
    where: { stageId },
    orderBy: [{ step: "desc" }, { createdAt: "desc" }],
  });
}

/** A checkpoint of a stage at one step: every model file saved together, one row per role. */
export type CheckpointSet = {
  step: number;
  final: boolean;
  /** In role order (actor, critic, reward, ema, sft). */
  checkpoints: Checkpoint[];
};

/**
 * The stage's newest checkpoint set: the files of its highest step saved in one transaction
 * (complete by construction), or null when the stage has none. What a resumed stage starts from.
 */
export async function latestCheckpointSet(p: Db, stageId: string): Promise<CheckpointSet | null> {
  const newest = await latestCheckpoint(p, stageId);
  if (!newest) return null;
  return {
    step: newest.step,
    final: newest.final,
    checkpoints: await setOf(p, stageId, newest.step, newest.createdAt),
  };
}

/**
 * The files of the stage's checkpoint at `step`, in role order; [] when there is none. Should
 * two attempts have saved that step, the newer set (never a mix of both).
 */
export async function checkpointsAtStep(
  p: Db,
  stageId: string,
  step: number,
): Promise<Checkpoint[]> {
  const newest = await p.checkpoint.findFirst({
    where: { stageId, step },
    orderBy: { createdAt: "desc" },
    select: { createdAt: true },
  });
  return newest ? setOf(p, stageId, step, newest.createdAt) : [];
}

function setOf(p: Db, stageId: string, step: number, createdAt: Date): Promise<Checkpoint[]> {
  return p.checkpoint.findMany({
    where: { stageId, step, createdAt },
    orderBy: { role: "asc" },
  });
}

export function getCheckpoint(p: Db, id: string): Promise<Checkpoint | null> {
  return p.checkpoint.findUnique({ where: { id } });
}

/** The part's bytes reassembled in chunk order; null when the checkpoint has no such part. */
export async function readCheckpointPart(
  p: Db,
  id: string,
  part: CheckpointPart,
): Promise<Uint8Array | null> {
  const chunks = await p.checkpointChunk.findMany({
    where: { checkpointId: id, part },
    orderBy: { index: "asc" },
    select: { data: true },
  });
  if (chunks.length === 0) return null;
  const total = chunks.reduce((n, c) => n + c.data.byteLength, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const { data } of chunks) {
    out.set(data, offset);
    offset += data.byteLength;
  }
  return out;
}

/** A run's checkpoints, oldest first. */
export function listCheckpoints(p: Db, runId: string): Promise<Checkpoint[]> {
  return p.checkpoint.findMany({
    where: { runId },
    orderBy: [{ createdAt: "asc" }, { step: "asc" }],
  });
}

export type ServableCheckpoint = Checkpoint & { run: Run; stage: { kind: StageKind } };

/** Final checkpoints (what the inference service lists as models), newest first. */
export function listServableCheckpoints(p: Db): Promise<ServableCheckpoint[]> {
  return p.checkpoint.findMany({
    where: { final: true },
    orderBy: [{ createdAt: "desc" }, { id: "desc" }],
    include: { run: true, stage: { select: { kind: true } } },
  });
}

/**
 * The newest checkpoint, final or not, of each run and role among `roles`, newest first (what
 * the inference service serves: a run's actor while its PPO stage still trains). `runId`
 * narrows it to one run. Files saved together share createdAt; a role has one file per set.
 */
export async function newestCheckpointPerRole(
  p: Db,
  roles: readonly CheckpointRole[],
  runId?: string,
): Promise<Checkpoint[]> {
  const rows = await p.checkpoint.findMany({
    where: { role: { in: [...roles] }, ...(runId ? { runId } : {}) },
    orderBy: [{ createdAt: "desc" }, { step: "desc" }, { id: "desc" }],
  });
  const seen = new Set<string>();
  return rows.filter((row) => {
    const key = `${row.runId}/${row.role}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

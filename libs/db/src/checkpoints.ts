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

/** Stores the checkpoint row and its chunks in one transaction. sha256 and bytes describe `model`. */
export async function saveCheckpoint(p: Db, input: NewCheckpoint): Promise<Checkpoint> {
  const id = newId("ckpt");
  return p.$transaction(
    async (tx) => {
      const checkpoint = await tx.checkpoint.create({
        data: {
          id,
          runId: input.runId,
          stageId: input.stageId,
          step: input.step,
          role: input.role,
          final: input.final,
          config: input.config as Prisma.InputJsonValue,
          sha256: createHash("sha256").update(input.model).digest("hex"),
          bytes: input.model.byteLength,
        },
      });
      await writeChunks(tx, id, "model", input.model);
      if (input.trainer) await writeChunks(tx, id, "trainer", input.trainer);
      return checkpoint;
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

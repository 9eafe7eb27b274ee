import type { StageKind, Status } from "./generated/prisma/client.ts";
import { Prisma } from "./generated/prisma/client.ts";
import { newId } from "./ids.ts";
import { isFinal, lockRun } from "./run-lock.ts";
import {
  checkLimit,
  type Db,
  type Page,
  type PageQuery,
  type RunWithStages,
  stagesInOrder,
  toPage,
  toRunWithStages,
} from "./rows.ts";

const withStages = { stages: stagesInOrder } as const;

export type NewRun = {
  name: string;
  spec: unknown;
  idempotencyKey?: string;
  stages: { kind: StageKind; maxSteps: number }[];
  /** What the api noticed at submission without refusing the run (default none). */
  warnings?: string[];
};

/**
 * Writes the run and its stages (all queued) in one transaction. A second call with an
 * idempotency key already taken (a concurrent retry) returns the run stored under that key.
 */
export async function createRun(p: Db, input: NewRun): Promise<RunWithStages> {
  const runId = newId("run");
  try {
    const run = await p.run.create({
      data: {
        id: runId,
        name: input.name,
        spec: input.spec as Prisma.InputJsonValue,
        idempotencyKey: input.idempotencyKey ?? null,
        warnings: input.warnings ?? [],
        stages: {
          create: input.stages.map((s) => ({
            id: newId("stage"),
            kind: s.kind,
            maxSteps: s.maxSteps,
          })),
        },
      },
      include: withStages,
    });
    return toRunWithStages(run);
  } catch (err) {
    if (input.idempotencyKey && isUniqueViolation(err)) {
      const existing = await findRunByIdempotencyKey(p, input.idempotencyKey);
      if (existing) return existing;
    }
    throw err;
  }
}

export async function getRun(p: Db, id: string): Promise<RunWithStages | null> {
  const run = await p.run.findUnique({ where: { id }, include: withStages });
  return run && toRunWithStages(run);
}

/**
 * Newest first; `after` is the id of the last run of the previous page; `status` keeps only runs
 * in that status.
 */
export async function listRuns(
  p: Db,
  { after, limit, status }: PageQuery & { status?: Status },
): Promise<Page<RunWithStages>> {
  checkLimit(limit);
  const rows = await p.run.findMany({
    where: status ? { status } : {},
    orderBy: [{ createdAt: "desc" }, { id: "desc" }],
    take: limit + 1,
    include: withStages,
    ...(after ? { cursor: { id: after }, skip: 1 } : {}),
  });
  return toPage(rows.map(toRunWithStages), limit);
}

export async function findRunByIdempotencyKey(p: Db, key: string): Promise<RunWithStages | null> {
  const run = await p.run.findUnique({ where: { idempotencyKey: key }, include: withStages });
  return run && toRunWithStages(run);
}

/**
 * Cancels the run and its queued or running stages. A finished run is returned unchanged;
 * an unknown id gives null.
 */
export async function cancelRun(p: Db, id: string): Promise<RunWithStages | null> {
  return p.$transaction(async (tx) => {
    const run = await lockRun(tx, id);
    if (!run) return null;
    if (!isFinal(run.status)) {
      const now = new Date();
      await tx.stage.updateMany({
        where: { runId: id, status: { in: ["queued", "running"] } },
        data: { status: "cancelled", finishedAt: now },
      });
      await tx.run.update({ where: { id }, data: { status: "cancelled", finishedAt: now } });
    }
    return toRunWithStages(await tx.run.findUniqueOrThrow({ where: { id }, include: withStages }));
  });
}

/** For a run whose jobs could not be queued: the run and its unfinished stages fail with `message`. */
export async function markRunFailed(p: Db, id: string, message: string): Promise<RunWithStages> {
  return p.$transaction(async (tx) => {
    await lockRun(tx, id);
    const now = new Date();
    await tx.stage.updateMany({
      where: { runId: id, status: { in: ["queued", "running"] } },
      data: { status: "failed", error: message, finishedAt: now },
    });
    const run = await tx.run.update({
      where: { id },
      data: { status: "failed", error: message, finishedAt: now },
      include: withStages,
    });
    return toRunWithStages(run);
  });
}

function isUniqueViolation(err: unknown): boolean {
  return err instanceof Prisma.PrismaClientKnownRequestError && err.code === "P2002";
}

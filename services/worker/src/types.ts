import type { Database } from "@chatrl/db";
import type { StageJobData } from "@chatrl/queue";
import type { Job } from "bullmq";
import type { Logger } from "pino";
import type { ProcessorTable } from "./stage-loop.ts";

export type Prisma = Database["prisma"];

export type StageJob = Job<StageJobData>;

/** What a stage processor needs besides its job: the database and where it runs. */
export type StageContext = {
  prisma: Prisma;
  /** The tensor backend this worker trains on (recorded as the stage's device). */
  device: string;
  logger: Logger;
  /** The processor of each stage kind this worker trains (processors.ts). */
  processors: ProcessorTable;
  /**
   * How a stage waits out an unreachable Postgres or Redis: the first pause, doubled after each
   * failed retry up to the longest. Default 500 ms and 15 s.
   */
  retry?: { baseMs: number; maxMs: number };
  /**
   * The job lock's duration: before each write the loop renews the lock, and a worker that no
   * longer holds it (the job was handed to another worker) writes nothing.
   */
  lockDurationMs?: number;
};

/** Why a job's AbortSignal fired; the processor reacts differently to each. */
export const ABORT_SHUTDOWN = "worker shutting down";
export const ABORT_LOCK_LOST = "job lock lost";

export type StageResult = {
  stageId: string;
  status: "succeeded" | "cancelled";
  step: number;
};

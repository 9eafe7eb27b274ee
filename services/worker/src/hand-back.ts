// Giving a job back to the queue without failing it, when the worker stops mid-stage.
import { DelayedError } from "bullmq";
import { ABORT_SHUTDOWN, type StageJob } from "./types.ts";

/**
 * On shutdown the job goes back to the wait list for any worker to resume from the stage's last
 * checkpoint. With the lock lost another worker may already own the job, so only stop: the
 * stalled-job checker hands it on.
 */
export async function handBackJob(
  job: StageJob,
  token: string | undefined,
  signal: AbortSignal,
): Promise<never> {
  if (signal.reason !== ABORT_SHUTDOWN) {
    throw new Error(`stage ${job.data.stageId} stopped: ${String(signal.reason)}`);
  }
  await job.moveToWait(token);
  // Tells BullMQ the job was moved on purpose: neither completed nor failed.
  throw new DelayedError();
}

// Jobs in each stage queue by state, read from BullMQ: what the dashboard's queue line, the
// /v1/dashboard/queues query and the Prometheus queue gauges show.
import type { StageKind } from "@chatrl/contracts";
import type { Queue } from "bullmq";

export const QUEUE_STATES = [
  "waiting",
  "active",
  "delayed",
  "failed",
  "completed",
  "waiting_children",
] as const;
export type QueueState = (typeof QUEUE_STATES)[number];
export type QueueCounts = { queue: StageKind } & Record<QueueState, number>;

/** Rejects when Redis does not answer within `timeoutMs` (the caller decides what that means). */
export async function queueCounts(
  queues: Record<StageKind, Queue>,
  timeoutMs: number,
): Promise<QueueCounts[]> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Redis did not answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  const read = Promise.all(
    (Object.entries(queues) as [StageKind, Queue][]).map(async ([kind, queue]) => {
      const c = await queue.getJobCounts(
        "waiting",
        "prioritized",
        "active",
        "delayed",
        "failed",
        "completed",
        "waiting-children",
      );
      return {
        queue: kind,
        waiting: (c.waiting ?? 0) + (c.prioritized ?? 0),
        active: c.active ?? 0,
        delayed: c.delayed ?? 0,
        failed: c.failed ?? 0,
        completed: c.completed ?? 0,
        waiting_children: c["waiting-children"] ?? 0,
      };
    }),
  );
  try {
    return await Promise.race([read, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

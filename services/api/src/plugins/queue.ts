import type { StageKind } from "@chatrl/contracts";
import type { FlowThread } from "@chatrl/queue";
import type { FlowProducer, Queue } from "bullmq";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";

export type QueueDeps = {
  flow: FlowProducer;
  /** Adds submitted runs' flows off the event loop (libs/queue flow-thread.ts); absent: `flow` does. */
  flowThread?: FlowThread;
  queues: Record<StageKind, Queue>;
  /** How long a request waits for Redis before answering 503 (default 5 s). */
  timeoutMs: number;
  /** Pauses before each retry of a committed run's flow (routes/run-dispatch.ts's default). */
  dispatchRetryDelaysMs?: number[];
};

declare module "fastify" {
  interface FastifyInstance {
    queue: QueueDeps;
  }
}

/** Shares the flow producer and stage queues; the caller owns (and closes) their connection. */
export const queuePlugin = fp(
  async (app: FastifyInstance, opts: QueueDeps) => {
    // Without a listener an 'error' event (Redis gone) would be thrown; requests see the
    // outage as 503s, so the log only needs to hear about it.
    const onError = (error: Error) => app.log.warn({ err: error }, "queue connection error");
    opts.flow.on("error", onError);
    for (const queue of Object.values(opts.queues)) queue.on("error", onError);
    app.addHook("onClose", async () => {
      opts.flow.off("error", onError);
      for (const queue of Object.values(opts.queues)) queue.off("error", onError);
    });
    app.decorate("queue", opts);
  },
  { name: "chatrl-queue", fastify: "5.x" },
);

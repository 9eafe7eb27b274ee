// Flows added on a thread of its own. Adding a flow is mostly BullMQ's JavaScript (job objects,
// keys, msgpack, the Lua scripts' arguments): in bench:api it took the api's event loop twice
// as long as everything else a POST /v1/runs does (0.36 ms of 0.54 a run). On its own thread
// that work runs beside the requests instead of between them; the event loop only builds the
// flows (runFlows, plain data) and posts them.
import { Worker } from "node:worker_threads";
import { QueueUnavailableError, type RunToEnqueue, runFlows } from "./index.ts";

type Waiting = { resolve: () => void; reject: (error: Error) => void; timer: NodeJS.Timeout };

/** The thread's answer to a batch: its flows are in Redis, or why not. */
type Answer = { type: "added"; id: number } | { type: "failed"; id: number; message: string };

const WORKER_FILE = new URL("./flow-thread-worker.cjs", import.meta.url);

export class FlowThread {
  readonly #redisUrl: string;
  readonly #prefix: string;
  #worker: Worker | null = null;
  readonly #waiting = new Map<number, Waiting>();
  #nextId = 0;
  #closed = false;

  /** Starts the thread: its own Redis connection (to `redisUrl`) and FlowProducer under `prefix`. */
  constructor(redisUrl: string, prefix: string) {
    this.#redisUrl = redisUrl;
    this.#prefix = prefix;
    this.#start();
  }

  /**
   * Adds the runs' flows in one Redis transaction (as enqueueRuns does). Rejects with
   * QueueUnavailableError when Redis does not take them within `timeoutMs`. Job ids are stage
   * ids, so adding a run again queues nothing.
   */
  addRuns(runs: RunToEnqueue[], opts: { timeoutMs?: number } = {}): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    const ids = runs.map((run) => run.id).join(", ");
    const unavailable = (why: string) =>
      new QueueUnavailableError(`Cannot queue runs ${ids}: ${why}`);
    if (this.#closed) return Promise.reject(unavailable("the flow thread is closed"));
    const flows = runs.flatMap(runFlows);
    if (flows.length === 0) return Promise.resolve();
    const worker = this.#worker ?? this.#start();
    const id = this.#nextId++;
    return new Promise<void>((resolve, reject) => {
      // The thread times its own adds out; this guards against a thread that stopped answering.
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        reject(unavailable(`the flow thread did not answer within ${timeoutMs + 1000} ms`));
      }, timeoutMs + 1000);
      this.#waiting.set(id, {
        resolve,
        reject: (error) => reject(unavailable(error.message)),
        timer,
      });
      worker.postMessage({ type: "add", id, flows, timeoutMs });
    });
  }

  /** Closes the thread's Redis connection and ends it; adds still waiting fail. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const worker = this.#worker;
    if (!worker) return;
    const closed = new Promise<void>((resolve) => {
      worker.on("message", (m: { type: string }) => m.type === "closed" && resolve());
      worker.once("exit", () => resolve());
    });
    worker.postMessage({ type: "close" });
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2000).unref())]);
    await worker.terminate();
    this.#failWaiting(new Error("the flow thread was closed"));
  }

  #start(): Worker {
    const worker = new Worker(WORKER_FILE, {
      workerData: { redisUrl: this.#redisUrl, prefix: this.#prefix },
    });
    worker.unref(); // an api that forgot close() still exits
    worker.on("message", (answer: Answer | { type: "closed" }) => {
      if (answer.type === "closed") return;
      const waiting = this.#waiting.get(answer.id);
      if (!waiting) return; // timed out meanwhile
      this.#waiting.delete(answer.id);
      clearTimeout(waiting.timer);
      if (answer.type === "added") waiting.resolve();
      else waiting.reject(new Error(answer.message));
    });
    // A thread that died takes its batches with it; the next add starts a new one.
    worker.on("error", (error) => this.#failWaiting(error));
    worker.on("exit", (code) => {
      if (this.#worker === worker) this.#worker = null;
      this.#failWaiting(new Error(`the flow thread exited (code ${code})`));
    });
    this.#worker = worker;
    return worker;
  }

  #failWaiting(error: Error): void {
    for (const [id, waiting] of this.#waiting) {
      clearTimeout(waiting.timer);
      this.#waiting.delete(id);
      waiting.reject(error);
    }
  }
}

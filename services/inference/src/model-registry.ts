// Loaded models, by checkpoint id. A checkpoint is read from Postgres and loaded on first use,
// at most once however many requests ask for it at the same time; a small LRU bounds how many
// stay in memory. An evicted model is disposed once the requests using it have finished.
import { type Database, readCheckpointPart } from "@chatrl/db";
import { ByteTokenizer, type GPT, generate, loadModel } from "@chatrl/engine";
import { LRUCache } from "lru-cache";
import {
  type GenerationResult,
  GenerationQueue,
  type SamplingOptions,
} from "./generation-queue.ts";

export type RegistryOptions = {
  /** How many models stay loaded (default 2): each holds its weights in memory. */
  maxLoadedModels?: number;
  /** Most requests generated together in one call (default 8). */
  maxBatchSize?: number;
  /**
   * How long an idle model waits for more requests before starting a call (default 5 ms, small
   * next to a generation's hundreds of ms; 0 waits only for the next turn of the event loop).
   * Requests arriving while a call runs always wait for the next one, whatever this is.
   */
  batchWindowMs?: number;
};

export type RegistryStats = {
  /** Checkpoints loaded into memory (a reload after eviction counts again). */
  loads: number;
  /** Calls of the engine's generate; fewer than `requests` when requests were batched. */
  generateCalls: number;
  /** Requests answered by those calls. */
  requests: number;
};

/** A loaded model lent to one request; `release()` when done with it. */
export type ModelLease = {
  checkpointId: string;
  contextLength: number;
  tokenizer: ByteTokenizer;
  /** `signal`: the client went away; a request still waiting for its turn is dropped. */
  generate(
    prompt: string,
    options: SamplingOptions,
    onText?: (text: string) => void,
    signal?: AbortSignal,
  ): Promise<GenerationResult>;
  release(): void;
};

class LoadedModel {
  users = 0;
  retired = false;
  disposed = false;

  constructor(
    readonly checkpointId: string,
    readonly model: GPT,
    readonly tokenizer: ByteTokenizer,
    readonly queue: GenerationQueue,
  ) {}

  retire(): void {
    this.retired = true;
    this.disposeIfUnused();
  }

  disposeIfUnused(): void {
    if (this.retired && this.users === 0 && !this.disposed) {
      this.disposed = true;
      this.model.dispose();
    }
  }
}

export class ModelRegistry {
  readonly stats: RegistryStats = { loads: 0, generateCalls: 0, requests: 0 };
  readonly #db: Database;
  readonly #batchLimits: { maxBatchSize: number; batchWindowMs: number };
  readonly #loaded: LRUCache<string, LoadedModel>;
  readonly #loading = new Map<string, Promise<LoadedModel>>();

  constructor(db: Database, options: RegistryOptions = {}) {
    this.#db = db;
    this.#batchLimits = {
      maxBatchSize: options.maxBatchSize ?? 8,
      batchWindowMs: options.batchWindowMs ?? 5,
    };
    this.#loaded = new LRUCache<string, LoadedModel>({
      max: options.maxLoadedModels ?? 2,
      dispose: (entry) => entry.retire(),
    });
  }

  /** Ids of the checkpoints in memory, most recently used first. */
  loadedCheckpoints(): string[] {
    return [...this.#loaded.keys()];
  }

  async acquire(checkpointId: string): Promise<ModelLease> {
    for (;;) {
      const entry = this.#loaded.get(checkpointId) ?? (await this.#load(checkpointId));
      // Another load may have evicted and disposed it while we waited; then load it again.
      if (entry.disposed) continue;
      entry.users++;
      return this.#lease(entry);
    }
  }

  /** Disposes every loaded model (after the requests using them finish). */
  close(): void {
    this.#loaded.clear();
  }

  #lease(entry: LoadedModel): ModelLease {
    let released = false;
    return {
      checkpointId: entry.checkpointId,
      contextLength: entry.model.config.contextLength,
      tokenizer: entry.tokenizer,
      generate: (prompt, options, onText, signal) =>
        entry.queue.submit(prompt, options, onText, signal),
      release: () => {
        if (released) return;
        released = true;
        entry.users--;
        entry.disposeIfUnused();
      },
    };
  }

  #load(checkpointId: string): Promise<LoadedModel> {
    let loading = this.#loading.get(checkpointId);
    if (!loading) {
      loading = this.#readAndLoad(checkpointId).finally(() => this.#loading.delete(checkpointId));
      this.#loading.set(checkpointId, loading);
    }
    return loading;
  }

  async #readAndLoad(checkpointId: string): Promise<LoadedModel> {
    const bytes = await readCheckpointPart(this.#db.prisma, checkpointId, "model");
    if (!bytes) throw new Error(`checkpoint ${checkpointId} has no model weights`);
    const model = await loadModel(bytes);
    const tokenizer = new ByteTokenizer();
    if (model.config.vocabSize < tokenizer.vocabSize) {
      model.dispose();
      throw new Error(
        `checkpoint ${checkpointId}: vocabulary of ${model.config.vocabSize} is smaller than the byte tokenizer's ${tokenizer.vocabSize}`,
      );
    }
    const queue = new GenerationQueue((prompts, options, onToken) => {
      this.stats.generateCalls++;
      this.stats.requests += prompts.length;
      return generate(model, tokenizer, prompts, { ...options, onToken });
    }, this.#batchLimits);
    const entry = new LoadedModel(checkpointId, model, tokenizer, queue);
    this.stats.loads++;
    this.#loaded.set(checkpointId, entry);
    return entry;
  }
}

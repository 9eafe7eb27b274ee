// Loaded models, by checkpoint, each with its decode loop (./decode-loop). A checkpoint is read
// from Postgres and loaded on first use, at most once however many requests ask for it at the
// same time; the cache is bounded by the bytes of the weights. A model name (`run-<id>`) follows
// its newest checkpoint: when a new one lands (seen by a request or by the refresh poll) it is
// loaded in the background while the old weights keep answering, new requests then use it, and
// the old weights are disposed once the requests using them have finished.
import { type Database, readCheckpointPart } from "@chatrl/db";
import {
  autoDecodeDtype,
  type DecodeDtype,
  type GPT,
  loadModel,
  type ModelConfig,
  servingTokenRules,
  type Tokenizer,
  type TokenRules,
  tokenizerFor,
} from "@chatrl/engine";
import { LRUCache } from "lru-cache";
import {
  DecodeLoop,
  type GenerationRequest,
  DEFAULT_MAX_PREFILL_TOKENS,
  type GenerationResult,
  type LoopEvent,
  type LoopLimits,
  type LoopStats,
  QueueFullError,
} from "./decode-loop.ts";
import { findServedModel, type ServedModel } from "./model-catalog.ts";

export type RegistryOptions = Partial<LoopLimits> & {
  /**
   * Bytes of weights kept loaded (default 2 GiB). A model larger than this is refused; loading
   * one past it unloads the least recently used (once its requests finish).
   */
  maxModelBytes?: number;
  /** How often loaded model names look for a newer checkpoint, in ms (default 2000; 0: only when asked). */
  refreshIntervalMs?: number;
  /**
   * The precision of the weights decode steps and prefills multiply by (vLLM's --dtype): "auto"
   * (default) serves bfloat16 where the CPU multiplies it natively (AMX or AVX-512 BF16) and
   * float32 elsewhere.
   */
  dtype?: ServingDtype;
};

export type ServingDtype = "auto" | DecodeDtype;
export const SERVING_DTYPES: readonly ServingDtype[] = ["auto", "float32", "bfloat16"];

/** The defaults: a small CPU machine serving tiny and small models. */
export const REGISTRY_DEFAULTS = {
  maxModelBytes: 2 * 1024 ** 3,
  maxRunningRows: 64,
  maxKvTokens: 64 * 1024,
  maxQueuedRequests: 256,
  maxPrefillTokens: DEFAULT_MAX_PREFILL_TOKENS,
  refreshIntervalMs: 2000,
  dtype: "auto",
} as const;

/** What the registry has done, for tests and metrics. */
export type RegistryStats = {
  /** Checkpoints loaded into memory (a reload after eviction counts again). */
  loads: number;
  /** Requests submitted to a decode loop. */
  requests: number;
  /** Requests refused because a model's queue was full (429). */
  rejected: number;
  /** Name switches to a newer checkpoint (a training run's new actor). */
  switches: number;
  /** Warm-up bursts run at load (one per model shape: DecodeLoop.warmUp). */
  warmUps: number;
  /** Checkpoints found too large for the byte budget (each is refused from then on unread). */
  tooLarge: number;
};

/** One loaded model, as the metrics see it. */
export type LoadedModelStats = LoopStats & {
  modelId: string;
  checkpointId: string;
  step: number;
  bytes: number;
  /** Replaced or evicted; disposed once its last request finishes. */
  retired: boolean;
  maxRunningRows: number;
  maxKvTokens: number;
  /** The precision its weights are served in. */
  dtype: DecodeDtype;
};

export type RegistryEvent = LoopEvent & { model: string };

/** The model's weights are larger than the whole budget. */
export class ModelTooLargeError extends Error {}

/** A loaded model lent to one request; `release()` when done with it. */
export type ModelLease = {
  modelId: string;
  checkpointId: string;
  step: number;
  contextLength: number;
  tokenizer: Tokenizer;
  rules: TokenRules;
  generate(request: GenerationRequest): Promise<GenerationResult>;
  release(): void;
};

class LoadedModel {
  users = 0;
  retired = false;
  disposed = false;

  constructor(
    readonly served: ServedModel,
    readonly model: GPT,
    readonly tokenizer: Tokenizer,
    readonly rules: TokenRules,
    readonly loop: DecodeLoop,
    readonly bytes: number,
  ) {}

  retire(): void {
    this.retired = true;
    this.disposeIfUnused();
  }

  disposeIfUnused(): void {
    if (this.retired && this.users === 0 && !this.disposed) {
      this.disposed = true;
      // The loop is idle (no users); close() releases its KV cache, then the weights go.
      void this.loop.close().finally(() => this.model.dispose());
    }
  }
}

export class ModelRegistry {
  readonly stats: RegistryStats = {
    loads: 0,
    requests: 0,
    rejected: 0,
    switches: 0,
    warmUps: 0,
    tooLarge: 0,
  };
  readonly limits: LoopLimits & {
    maxModelBytes: number;
    refreshIntervalMs: number;
    dtype: ServingDtype;
  };
  readonly #db: Database;
  readonly #loaded: LRUCache<string, LoadedModel>;
  readonly #loading = new Map<string, Promise<LoadedModel>>();
  readonly #warmedShapes = new Set<string>();
  /** Checkpoints refused for their size: checkpoints never change, so neither does the answer. */
  readonly #tooLarge = new Map<string, ModelTooLargeError>();
  /** Model name -> the loaded checkpoint that answers it. */
  readonly #current = new Map<string, LoadedModel>();
  readonly #listeners = new Set<(event: RegistryEvent) => void>();
  readonly #timer?: NodeJS.Timeout;

  constructor(db: Database, options: RegistryOptions = {}) {
    this.#db = db;
    this.limits = { ...REGISTRY_DEFAULTS, ...definedOnly(options) };
    this.#loaded = new LRUCache<string, LoadedModel>({
      maxSize: this.limits.maxModelBytes,
      sizeCalculation: (entry) => entry.bytes,
      dispose: (entry) => {
        if (this.#current.get(entry.served.id) === entry) this.#current.delete(entry.served.id);
        entry.retire();
      },
    });
    if (this.limits.refreshIntervalMs > 0) {
      this.#timer = setInterval(() => void this.refresh(), this.limits.refreshIntervalMs);
      this.#timer.unref();
    }
  }

  /** Ids of the checkpoints in memory, most recently used first. */
  loadedCheckpoints(): string[] {
    return [...this.#loaded.keys()];
  }

  /** Bytes of the weights in the cache (retired models still finishing requests not counted). */
  loadedModelBytes(): number {
    return this.#loaded.calculatedSize ?? 0;
  }

  /** Per loaded model: its decode loop's occupancy and what it serves. */
  snapshot(): LoadedModelStats[] {
    return [...this.#loaded.values()].map((entry) => ({
      modelId: entry.served.id,
      checkpointId: entry.served.checkpointId,
      step: entry.served.step,
      bytes: entry.bytes,
      retired: entry.retired,
      maxRunningRows: this.limits.maxRunningRows,
      maxKvTokens: this.limits.maxKvTokens,
      dtype: entry.loop.dtype,
      ...entry.loop.stats(),
    }));
  }

  /** Events of every decode loop (first tokens, steps, finished requests); returns an unsubscribe. */
  onEvent(listener: (event: RegistryEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * A lease on the model that answers `served` (the newest checkpoint of a name). When an older
   * checkpoint of the same name is loaded and the newest is not yet, the older answers and the
   * newest loads in the background.
   */
  async acquire(served: ServedModel): Promise<ModelLease> {
    for (;;) {
      const current = this.#current.get(served.id);
      if (current && !current.disposed && current.served.checkpointId !== served.checkpointId) {
        if (isNewer(served, current.served)) this.#loadInBackground(served);
        return this.#lease(current);
      }
      const entry = this.#loaded.get(served.checkpointId) ?? (await this.#load(served));
      // Another load may have evicted and disposed it while we waited; then load it again.
      if (entry.disposed) continue;
      return this.#lease(entry);
    }
  }

  /**
   * What a loaded name serves now, without asking Postgres: the refresh poll keeps it current
   * (a new checkpoint would only be loaded in the background anyway). Null when the name is not
   * loaded or there is no poll: then the caller looks the name up.
   */
  servedNow(modelId: string): ServedModel | null {
    return this.limits.refreshIntervalMs > 0 ? this.answering(modelId) : null;
  }

  /**
   * The checkpoint that answers a name in this process now; null when the name is not loaded
   * here. A newer checkpoint of the name answers only once it has loaded.
   */
  answering(modelId: string): ServedModel | null {
    const current = this.#current.get(modelId);
    return current && !current.disposed && !current.retired ? current.served : null;
  }

  /** Looks for a newer checkpoint of every loaded name, and loads those found in the background. */
  async refresh(): Promise<void> {
    for (const [id, entry] of [...this.#current]) {
      try {
        const newest = await findServedModel(this.#db.prisma, id);
        if (
          newest &&
          newest.checkpointId !== entry.served.checkpointId &&
          isNewer(newest, entry.served)
        )
          this.#loadInBackground(newest);
      } catch {
        // Postgres unreachable: the loaded weights keep answering; the next poll tries again.
      }
    }
  }

  /** Waits for the background loads under way (tests). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.#loading.values()]);
  }

  /** Disposes every loaded model (after the requests using them finish). */
  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#loaded.clear();
    this.#current.clear();
  }

  #lease(entry: LoadedModel): ModelLease {
    entry.users++;
    let released = false;
    return {
      modelId: entry.served.id,
      checkpointId: entry.served.checkpointId,
      step: entry.served.step,
      contextLength: entry.model.config.contextLength,
      tokenizer: entry.tokenizer,
      rules: entry.rules,
      generate: (request) => {
        try {
          const result = entry.loop.submit(request);
          this.stats.requests++;
          return result;
        } catch (error) {
          if (error instanceof QueueFullError) this.stats.rejected++;
          throw error;
        }
      },
      release: () => {
        if (released) return;
        released = true;
        entry.users--;
        entry.disposeIfUnused();
      },
    };
  }

  #loadInBackground(served: ServedModel): void {
    if (this.#loading.has(served.checkpointId)) return;
    // A failed background load leaves the old weights answering; the next request or poll retries.
    this.#load(served).catch(() => {});
  }

  #load(served: ServedModel): Promise<LoadedModel> {
    const refused = this.#tooLarge.get(served.checkpointId);
    if (refused) return Promise.reject(refused);
    let loading = this.#loading.get(served.checkpointId);
    if (!loading) {
      loading = this.#readAndLoad(served).finally(() => this.#loading.delete(served.checkpointId));
      this.#loading.set(served.checkpointId, loading);
    }
    return loading;
  }

  #refuseTooLarge(served: ServedModel, needs: string): never {
    const error = new ModelTooLargeError(
      `The model '${served.id}' needs ${needs} of weights; this server keeps at most ${mib(this.limits.maxModelBytes)} loaded`,
    );
    this.#tooLarge.set(served.checkpointId, error);
    this.stats.tooLarge++;
    throw error;
  }

  async #readAndLoad(served: ServedModel): Promise<LoadedModel> {
    const bytes = await readCheckpointPart(this.#db.prisma, served.checkpointId, "model");
    if (!bytes) throw new Error(`checkpoint ${served.checkpointId} has no model weights`);
    // The stored weights alone past the budget: refused before any tensor is made.
    if (bytes.byteLength > this.limits.maxModelBytes)
      this.#refuseTooLarge(served, `more than ${mib(bytes.byteLength)}`);
    const model = await loadModel(bytes);
    let entry: LoadedModel;
    try {
      // The weights and the copies of them that decode steps read (GPT.packForDecoding).
      // "auto" is resolved here, once the backend that will run the model is up.
      const dtype = this.limits.dtype === "auto" ? autoDecodeDtype() : this.limits.dtype;
      const weightBytes = model.parameterCount() * 4 + model.packForDecoding(dtype);
      if (weightBytes > this.limits.maxModelBytes) this.#refuseTooLarge(served, mib(weightBytes));
      // The tokenizer and template the checkpoint was trained with (byte-v1 for older ones).
      const tokenizer = tokenizerFor(model.config);
      const rules = servingTokenRules(tokenizer, model.config.vocabSize);
      const loop = new DecodeLoop(
        model,
        tokenizer,
        rules,
        this.limits,
        (event) => {
          for (const listener of this.#listeners) listener({ ...event, model: served.id });
        },
        dtype,
      );
      // Once per model shape: what a warm-up warms (compiled code, the heap) stays with the
      // process, so a training run's next checkpoint, loaded beside live requests, skips it.
      const shape = shapeKey(model.config);
      if (!this.#warmedShapes.has(shape)) {
        await loop.warmUp();
        this.#warmedShapes.add(shape);
        this.stats.warmUps++;
      }
      entry = new LoadedModel(served, model, tokenizer, rules, loop, weightBytes);
    } catch (error) {
      model.dispose();
      throw error;
    }
    this.stats.loads++;
    this.#loaded.set(served.checkpointId, entry);
    const previous = this.#current.get(served.id);
    if (!previous || previous.disposed || isNewer(served, previous.served)) {
      this.#current.set(served.id, entry);
      if (previous && previous !== entry) {
        this.stats.switches++;
        // New requests use the new weights; the old ones go when their requests finish.
        this.#loaded.delete(previous.served.checkpointId);
      }
    }
    return entry;
  }
}

/** Models of one shape share what a warm-up warms. */
function shapeKey(c: ModelConfig): string {
  return [c.dModel, c.nLayers, c.nHeads, c.mlpRatio, c.vocabSize, c.contextLength].join("x");
}

function isNewer(a: ServedModel, b: ServedModel): boolean {
  return a.createdMs > b.createdMs || (a.createdMs === b.createdMs && a.step > b.step);
}

function mib(bytes: number): string {
  return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

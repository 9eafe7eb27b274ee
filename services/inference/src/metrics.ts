// The inference service's Prometheus series, beside the HTTP and process ones of the shared
// plugin: requests, tokens, time to first token and request time (from the model registry's
// events), batch occupancy (rows in each decode step, and running rows against the limit),
// queued requests, and the models loaded with their bytes (read from the registry on scrape).
import { Counter, Gauge, Histogram, type Registry } from "@chatrl/contracts";
import type { ModelRegistry } from "./model-registry.ts";

/** From a first token in tens of ms (a warm tiny model) to a long queue wait. */
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const ROW_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128];

/** Registers the series on `registry`; returns the unsubscribe from the registry's events. */
export function registerInferenceMetrics(registry: Registry, models: ModelRegistry): () => void {
  const registers = [registry];
  const labelNames = ["model"] as const;
  const requests = new Counter({
    name: "chatrl_inference_requests_total",
    help: "Generation requests finished, by model name.",
    labelNames,
    registers,
  });
  const promptTokens = new Counter({
    name: "chatrl_inference_prompt_tokens_total",
    help: "Prompt tokens of finished requests, by model name.",
    labelNames,
    registers,
  });
  const completionTokens = new Counter({
    name: "chatrl_inference_completion_tokens_total",
    help: "Tokens generated for finished requests, by model name.",
    labelNames,
    registers,
  });
  const ttft = new Histogram({
    name: "chatrl_inference_time_to_first_token_seconds",
    help: "From a request's arrival at its model to its first generated token.",
    labelNames,
    buckets: TTFT_BUCKETS,
    registers,
  });
  const duration = new Histogram({
    name: "chatrl_inference_request_duration_seconds",
    help: "From a request's arrival at its model to its last token.",
    labelNames,
    buckets: DURATION_BUCKETS,
    registers,
  });
  const stepRows = new Histogram({
    name: "chatrl_inference_batch_rows",
    help: "Rows (sequences) generated together in each decode step: batch occupancy over time.",
    labelNames,
    buckets: ROW_BUCKETS,
    registers,
  });

  // Counts the registry keeps itself, shown as counters by adding what grew since the scrape before.
  const fromStats = (name: string, help: string, read: () => number) => {
    let seen = 0;
    new Counter({
      name,
      help,
      registers,
      collect() {
        const now = read();
        if (now > seen) this.inc(now - seen);
        seen = Math.max(seen, now);
      },
    });
  };
  fromStats(
    "chatrl_inference_model_loads_total",
    "Checkpoints loaded into memory (a reload after eviction counts again).",
    () => models.stats.loads,
  );
  fromStats(
    "chatrl_inference_rejected_total",
    "Requests answered 429 because their model's queue was full.",
    () => models.stats.rejected,
  );
  fromStats(
    "chatrl_inference_model_switches_total",
    "Model names moved to a newer checkpoint (a training run's new actor).",
    () => models.stats.switches,
  );

  // What is loaded now, read when scraped; series of unloaded models are dropped.
  const perModel = (name: string, help: string, read: (s: Snapshot) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["model", "checkpoint"],
      registers,
      collect() {
        this.reset();
        for (const s of models.snapshot()) {
          if (!s.retired) this.set({ model: s.modelId, checkpoint: s.checkpointId }, read(s));
        }
      },
    });
  type Snapshot = ReturnType<ModelRegistry["snapshot"]>[number];
  perModel(
    "chatrl_inference_loaded_model_bytes",
    "Bytes of a loaded model's weights.",
    (s) => s.bytes,
  );
  perModel(
    "chatrl_inference_running_rows",
    "Rows in a loaded model's running batch.",
    (s) => s.runningRows,
  );
  perModel(
    "chatrl_inference_batch_occupancy",
    "Running rows over the most a batch may hold (maxRunningRows), 0..1.",
    (s) => (s.maxRunningRows > 0 ? s.runningRows / s.maxRunningRows : 0),
  );
  perModel(
    "chatrl_inference_queued_requests",
    "Requests waiting to join a loaded model's batch.",
    (s) => s.queuedRequests,
  );
  perModel(
    "chatrl_inference_kv_tokens_reserved",
    "KV-cache tokens reserved by a loaded model's admitted requests.",
    (s) => s.kvTokensReserved,
  );
  new Gauge({
    name: "chatrl_inference_model_dtype_info",
    help: "1 per loaded model, labelled with the precision its weights are served in (CHATRL_INFERENCE_DTYPE).",
    labelNames: ["model", "checkpoint", "dtype"],
    registers,
    collect() {
      this.reset();
      for (const s of models.snapshot()) {
        if (!s.retired)
          this.set({ model: s.modelId, checkpoint: s.checkpointId, dtype: s.dtype }, 1);
      }
    },
  });
  new Gauge({
    name: "chatrl_inference_loaded_models",
    help: "Models loaded in memory (not counting replaced ones still finishing requests).",
    registers,
    collect() {
      this.set(models.snapshot().filter((s) => !s.retired).length);
    },
  });
  new Gauge({
    name: "chatrl_inference_loaded_bytes",
    help: "Bytes of all loaded weights (with their copies packed for decoding), against the cache's maxModelBytes budget.",
    registers,
    collect() {
      this.set(models.loadedModelBytes());
    },
  });

  return models.onEvent((event) => {
    const labels = { model: event.model };
    if (event.type === "first_token") ttft.observe(labels, event.seconds);
    else if (event.type === "step") stepRows.observe(labels, event.rows);
    else if (event.type === "finished") {
      requests.inc(labels);
      duration.observe(labels, event.seconds);
      promptTokens.inc(labels, event.promptTokens);
      completionTokens.inc(labels, event.completionTokens);
    }
  });
}

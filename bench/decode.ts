// `npm run bench:decode`: continuous batching's decode step in one process, without HTTP: the
// inference service's model shape (the probe GPT of bench:inference: d_model 256, 4 layers,
// context 256, byte-v2 vocabulary) decoding rows of 64 prompt tokens and 128 new tokens each
// through a DecodeBatch, at each batch size. Printed as one JSON object: per batch size the step
// time (median and mean over every step of the repetitions), tokens/s, the forward pass's mean
// time per step (the model's kernels; the rest of a step is sampling), the prefill of the level's
// prompts (median over the repetitions) and the KV cache's bytes at the longest. What
// bench:inference measures minus HTTP, clients and the event loop.
//
// The weights are packed in --dtype as the inference service packs them (default auto: bfloat16
// where the CPU multiplies it: AMX or AVX-512 BF16; float32 elsewhere).
//
//   npm run bench:decode -- [--rows 1,4,16,64] [--repeats N] [--threads N]
//                           [--dtype auto|float32|bfloat16] [--activation relu|gelu]
import { availableParallelism, loadavg } from "node:os";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import {
  autoDecodeDtype,
  DecodeBatch,
  type DecodeDtype,
  GPT,
  initBackend,
  MODEL_PRESETS,
  type ModelConfig,
  tf,
} from "../libs/engine/src/index.ts";
import { nativeThreads, setNativeThreads } from "../libs/engine/src/kernels/index.ts";

const PROMPT_TOKENS = 64;
const NEW_TOKENS = 128;

const { values: args } = parseArgs({
  options: {
    rows: { type: "string", default: "1,4,16,64" },
    repeats: { type: "string", default: "5" },
    threads: { type: "string" },
    dtype: { type: "string", default: "auto" },
    activation: { type: "string", default: "relu" },
  },
});
if (args.activation !== "relu" && args.activation !== "gelu")
  throw new Error(`--activation must be relu or gelu, not ${args.activation}`);
if (!["auto", "float32", "bfloat16"].includes(String(args.dtype)))
  throw new Error(`--dtype must be auto, float32 or bfloat16, not ${args.dtype}`);

const config: ModelConfig = {
  ...MODEL_PRESETS.probe,
  vocabSize: MODEL_PRESETS.tiny.vocabSize,
  tokenizer: MODEL_PRESETS.tiny.tokenizer,
  contextLength: 256,
  activation: args.activation, // relu (the probe's) or gelu (the tiny and small presets')
};

const backend = await initBackend();
if (args.threads) setNativeThreads(Number(args.threads));
const model = new GPT(config, 1);
const dtype: DecodeDtype = args.dtype === "auto" ? autoDecodeDtype() : (args.dtype as DecodeDtype);
const prompt = Array.from({ length: PROMPT_TOKENS }, (_, i) => 32 + (i % 64)); // byte ids

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const round = (x: number, digits = 3) => Number(x.toFixed(digits));

async function level(rows: number, repeats: number) {
  const steps: number[] = [];
  const forwards: number[] = [];
  const prefills: number[] = [];
  let cacheBytes = 0;
  for (let repeat = 0; repeat <= repeats; repeat++) {
    // Repeat 0 warms up (compiled paths, pools, heap) and is not counted.
    const batch = new DecodeBatch(model, { dtype });
    const prefillStart = performance.now();
    await batch.add(
      Array.from({ length: rows }, (_, i) => ({
        prompt,
        rows: [
          {
            maxNewTokens: NEW_TOKENS,
            minNewTokens: NEW_TOKENS,
            temperature: 1,
            topP: 1,
            topK: 0,
            minP: 0,
            seed: `bench:${repeat}:${i}`,
            stopIds: [],
            suppressIds: [],
          },
        ],
      })),
    );
    if (repeat > 0) prefills.push(performance.now() - prefillStart);
    while (batch.size > 0) {
      cacheBytes = Math.max(cacheBytes, batch.cacheBytes());
      const start = performance.now();
      const forwardBefore = batch.counts.forwardMs;
      await batch.step();
      if (repeat === 0) continue;
      steps.push(performance.now() - start);
      forwards.push(batch.counts.forwardMs - forwardBefore);
    }
    batch.dispose();
  }
  const stepMs = mean(steps);
  return {
    rows,
    steps: steps.length,
    step_ms_median: round(median(steps)),
    step_ms_mean: round(stepMs),
    tokens_per_s: round((rows * 1000) / stepMs, 0),
    // The forward pass alone (the model's kernels; the rest of a step is sampling).
    forward_ms_mean: round(mean(forwards)),
    prefill_ms_median: round(median(prefills)),
    kv_cache_bytes: cacheBytes,
  };
}

const load = loadavg()[0];
const levels = [];
for (const rows of String(args.rows).split(",").map(Number))
  levels.push(await level(rows, Number(args.repeats)));
const one = levels.find((l) => l.rows === 1);
const sixteen = levels.find((l) => l.rows === 16);
console.log(
  JSON.stringify(
    {
      bench: "decode",
      model: { ...config, parameters: model.parameterCount() },
      backend: backend.name,
      dtype,
      threads: nativeThreads(),
      cores: availableParallelism(),
      prompt_tokens: PROMPT_TOKENS,
      new_tokens: NEW_TOKENS,
      repeats: Number(args.repeats),
      levels,
      throughput_ratio_16_to_1:
        one && sixteen ? round(sixteen.tokens_per_s / one.tokens_per_s, 2) : undefined,
      tensors_after: tf.memory().numTensors,
      load_average_1m: { start: load, end: loadavg()[0] },
    },
    null,
    2,
  ),
);
model.dispose();

// `npm run bench:engine`: training and generation speed of the engine on the probe model of
// issue 3 (GPT, d_model 256, 4 layers, 4 heads, context 128, batch 16, byte vocabulary, ReLU
// MLP x4, tied embeddings, AdamW), printed as one JSON object.
//
//   npm run bench:engine -- [--backend wasm|cpu|tensorflow|tensorflow-gpu] [--threads N]
//                           [--steps N] [--plain] [--activation relu|gelu]
//
// --threads: threads of the native kernels (default: every core); --plain: the pure tfjs path
// (native kernels off) for comparison; --activation gelu: the probe with the presets' GELU.
import { availableParallelism, loadavg } from "node:os";
import { parseArgs } from "node:util";
import {
  AdamW,
  type BackendName,
  clipByGlobalNorm,
  GPT,
  generate,
  initBackend,
  MODEL_PRESETS,
  type Tokenizer,
  tf,
} from "../libs/engine/src/index.ts";
import {
  installFastKernels,
  loadNativeKernels,
  nativeThreads,
  setFastKernelsEnabled,
  setNativeThreads,
} from "../libs/engine/src/kernels/index.ts";
import { crossEntropy } from "../libs/engine/src/ops.ts";

const BATCH = 16;
const PROMPT_TOKENS = 64;
const NEW_TOKENS = 64;
const WARMUP_STEPS = 3;

const { values: args } = parseArgs({
  options: {
    backend: { type: "string" },
    threads: { type: "string" },
    steps: { type: "string", default: "20" },
    plain: { type: "boolean", default: false },
    activation: { type: "string", default: "relu" },
  },
});
if (args.activation !== "relu" && args.activation !== "gelu")
  throw new Error(`--activation must be relu or gelu, not ${args.activation}`);
/** The probe model, with GELU (the tiny and small presets' activation) on --activation gelu. */
const PROBE = { ...MODEL_PRESETS.probe, activation: args.activation } as const;

/** Deterministic pseudo-random bytes (the benchmark needs shapes, not meaning). */
function bytes(n: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}

/** Bytes with no end-of-text id, so every row generates exactly NEW_TOKENS tokens. */
const benchTokenizer: Tokenizer = {
  vocabSize: 256,
  eosId: -1,
  padId: 0,
  encode: (text) => Array.from(text, (c) => c.charCodeAt(0) & 255),
  decode: (ids) => String.fromCharCode(...ids),
  bytes: (ids) => Uint8Array.from(ids.filter((id) => id >= 0 && id < 256)),
  tokenName: (id) => String.fromCharCode(id),
};

function seconds(since: number): number {
  return (performance.now() - since) / 1000;
}

/** GFLOP/s of a 1024^3 product on the active backend: the best of 5 rounds, so that a busy
 * neighbour on a shared machine does not lower the yardstick of train_mfu. */
function matmulGflops(): number {
  const n = 1024;
  const a = tf.randomNormal([n, n]);
  const b = tf.randomNormal([n, n]);
  const once = () => {
    const c = tf.matMul(a, b);
    c.dataSync();
    c.dispose();
  };
  for (let i = 0; i < 3; i++) once();
  let best = 0;
  for (let round = 0; round < 5; round++) {
    const reps = 5;
    const start = performance.now();
    for (let i = 0; i < reps; i++) once();
    best = Math.max(best, (2 * n ** 3 * reps) / seconds(start) / 1e9);
  }
  tf.dispose([a, b]);
  return best;
}

function benchTraining(steps: number) {
  const config = PROBE;
  const model = new GPT(config, 1);
  const weights = model.namedWeights();
  const nameOf = new Map([...weights].map(([name, v]) => [v.name, name]));
  const optimizer = new AdamW(weights, { weightDecay: 0.01 });
  const T = config.contextLength;
  const data = bytes(BATCH * (T + 1), 7);
  const inputs = tf.tensor2d(
    Int32Array.from({ length: BATCH * T }, (_, i) => data[Math.floor(i / T) * (T + 1) + (i % T)]),
    [BATCH, T],
    "int32",
  );
  const targets = tf.tensor1d(
    Int32Array.from(
      { length: BATCH * T },
      (_, i) => data[Math.floor(i / T) * (T + 1) + (i % T) + 1],
    ),
    "int32",
  );
  const step = (): number =>
    tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => {
        const logits = model.forward(inputs, { training: true }).reshape([BATCH * T, 256]);
        return tf.mean(crossEntropy(logits as tf.Tensor2D, targets)) as tf.Scalar;
      });
      const named = new Map(Object.entries(grads).map(([k, g]) => [nameOf.get(k) as string, g]));
      const clipped = clipByGlobalNorm(named, 1.0);
      optimizer.apply(clipped.grads, 1e-3);
      tf.dispose([...clipped.grads.values(), clipped.norm]);
      return value.dataSync()[0];
    });
  let loss = 0;
  for (let i = 0; i < WARMUP_STEPS; i++) loss = step();
  const tensorsBefore = tf.memory().numTensors;
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  for (let i = 0; i < steps; i++) loss = step();
  const elapsed = seconds(start);
  const cpu = process.cpuUsage(cpuStart);
  const tensorsAfter = tf.memory().numTensors;
  const tokensPerS = (BATCH * T * steps) / elapsed;
  const result = {
    parameters: model.parameterCount(),
    train_steps: steps,
    train_step_s: elapsed / steps,
    // CPU time of this process per step: what the step costs when the machine is shared.
    train_step_cpu_s: (cpu.user + cpu.system) / 1e6 / steps,
    train_tokens_per_s: tokensPerS,
    train_gflops: (tokensPerS * model.trainingFlopsPerToken(T)) / 1e9,
    train_loss: loss,
    tensors_before: tensorsBefore,
    tensors_after: tensorsAfter,
  };
  optimizer.dispose();
  model.dispose();
  tf.dispose([inputs, targets]);
  return result;
}

async function benchDecode() {
  const model = new GPT(PROBE, 2);
  const prompts = Array.from({ length: BATCH }, (_, r) =>
    String.fromCharCode(...bytes(PROMPT_TOKENS, 100 + r).map((b) => 32 + (b % 95))),
  );
  const opts = { maxTokens: NEW_TOKENS, temperature: 0, topP: 1 };
  await generate(model, benchTokenizer, prompts.slice(0, 2), { ...opts, maxTokens: 4 }); // warm-up
  let start = performance.now();
  const results = await generate(model, benchTokenizer, prompts, opts);
  const cached = seconds(start);
  const generated = results.reduce((n, r) => n + r.completionTokens, 0);

  // The same work without a cache: every new token re-reads the whole sequence.
  const naiveOnce = (newTokens: number) => {
    const rows = prompts.map((p) => benchTokenizer.encode(p));
    for (let t = 0; t < newTokens; t++) {
      const next = tf.tidy(() => {
        const ids = tf.tensor2d(rows.flat(), [BATCH, rows[0].length], "int32");
        const logits = model.forward(ids, { training: true }); // the full-sequence path; [B, T, V]
        const last = logits
          .slice([0, rows[0].length - 1, 0], [BATCH, 1, 256])
          .reshape([BATCH, 256]);
        return tf.argMax(last, -1);
      });
      const picked = next.dataSync();
      next.dispose();
      for (const [r, row] of rows.entries()) row.push(picked[r]);
    }
  };
  naiveOnce(2); // warm-up
  start = performance.now();
  naiveOnce(NEW_TOKENS);
  const naive = seconds(start);
  model.dispose();
  return {
    decode_batch: BATCH,
    decode_prompt_tokens: PROMPT_TOKENS,
    decode_new_tokens: NEW_TOKENS,
    decode_tokens_per_s: generated / cached,
    decode_naive_tokens_per_s: (BATCH * NEW_TOKENS) / naive,
    decode_kv_speedup: generated / cached / ((BATCH * NEW_TOKENS) / naive),
  };
}

function hostedThreads(backend: { name: string; threads: number }): number {
  return backend.name === "wasm" || backend.name === "cpu" ? 1 : backend.threads;
}

async function main() {
  const backend = await initBackend(args.backend as BackendName | undefined);
  if (args.threads) setNativeThreads(Number(args.threads));
  if (args.plain) setFastKernelsEnabled(false);
  const kernels = installFastKernels();
  const native = loadNativeKernels();
  const load = loadavg();
  const matmul = matmulGflops();
  const train = benchTraining(Number(args.steps));
  const decode = await benchDecode();
  const report = {
    backend: backend.name,
    // Native kernels run on their own threads; without them wasm and cpu compute on this one.
    threads: kernels.native && !args.plain ? nativeThreads() : hostedThreads(backend),
    cores: availableParallelism(),
    native_kernels: kernels.native && !args.plain,
    blas: native && !args.plain ? native.blasInfo().config : null,
    model: `probe: d_model 256, 4 layers, 4 heads, context 128, batch 16, vocab 256, ${PROBE.activation === "relu" ? "ReLU" : "GELU"}, tied`,
    matmul_gflops: matmul,
    ...train,
    train_mfu: train.train_gflops / matmul,
    ...decode,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    load_average_1m: { start: load[0], end: loadavg()[0] },
  };
  const rounded = Object.fromEntries(
    Object.entries(report).map(([k, v]) => [
      k,
      typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v,
    ]),
  );
  console.log(JSON.stringify(rounded, null, 2));
}

await main();

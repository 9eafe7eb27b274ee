// `npm run bench:ppo`: seconds of one PPO step on the probe model (GPT, d_model 256, 4 layers,
// 4 heads, context 128) with 16 rollouts of 64-token prompts and 64-token answers, split into
// generation, scoring and training, once with the hybrid engine's KV-cache generation and once
// recomputing the whole sequence for every new token; printed as one JSON object.
//
//   npm run bench:ppo -- [--backend wasm|cpu|tensorflow|tensorflow-gpu] [--threads N] [--steps N]
import { availableParallelism, loadavg } from "node:os";
import { parseArgs } from "node:util";
import {
  type BackendName,
  GPT,
  initBackend,
  MODEL_PRESETS,
  type PpoConfig,
  PPOTrainer,
  type Tokenizer,
  tf,
  ValueModel,
} from "../libs/engine/src/index.ts";
import {
  installFastKernels,
  nativeThreads,
  setNativeThreads,
} from "../libs/engine/src/kernels/index.ts";

const BATCH = 16;
const PROMPT_TOKENS = 64;
const ANSWER_TOKENS = 64;

const { values: args } = parseArgs({
  options: {
    backend: { type: "string" },
    threads: { type: "string" },
    steps: { type: "string", default: "3" },
  },
});

/** Bytes with an end-of-text id no model can sample, so every answer is ANSWER_TOKENS long. */
const benchTokenizer: Tokenizer = {
  vocabSize: 256,
  eosId: 256,
  padId: 0,
  encode: (text) => Array.from(text, (c) => c.charCodeAt(0) & 255),
  decode: (ids) => String.fromCharCode(...ids.filter((id) => id < 256)),
  bytes: (ids) => Uint8Array.from(ids.filter((id) => id >= 0 && id < 256)),
  tokenName: (id) => String.fromCharCode(id),
};

/** 64-character prompts of printable bytes (the benchmark needs shapes, not meaning). */
const prompts = Array.from({ length: BATCH }, (_, b) =>
  Array.from({ length: PROMPT_TOKENS }, (_, t) =>
    String.fromCharCode(33 + ((b * 31 + t * 7) % 90)),
  ).join(""),
);

const config: PpoConfig = {
  epochs: 1,
  generationBatchSize: BATCH,
  trainingBatchSize: BATCH,
  ppoEpochs: 1,
  maxPromptSeqLen: PROMPT_TOKENS,
  maxAnswerSeqLen: ANSWER_TOKENS,
  actorLearningRate: 1e-5,
  criticLearningRate: 1e-5,
  actorWeightDecay: 0,
  criticWeightDecay: 0,
  warmupSteps: 0,
  klCtl: 0.1,
  clipRewardValue: 5,
  cliprange: 0.2,
  cliprangeValue: 0.2,
  gamma: 1,
  lam: 0.95,
  temperature: 1,
  topP: 1,
  enableEma: true,
  emaBeta: 0.992,
  unsupCoef: 0,
  gradClip: 1,
  seed: 1,
};

type Phases = { generation: number; scoring: number; training: number };

/** Mean phase seconds over `steps` PPO steps after one warm-up step. */
async function timeSteps(
  useKvCache: boolean,
  steps: number,
): Promise<Phases & { tensors_stable: boolean }> {
  const probe = MODEL_PRESETS.probe;
  const models = {
    actor: new GPT(probe, 1),
    reference: new GPT(probe, 1),
    ema: new GPT(probe, 1),
    critic: ValueModel.fresh(probe, 2),
    reward: ValueModel.fresh(probe, 3),
  };
  const trainer = new PPOTrainer(models, benchTokenizer, prompts, [], {
    ...config,
    maxSteps: steps + 1,
    useKvCache,
  });
  try {
    await trainer.trainStep(); // warm-up: kernels compiled, buffers allocated
    const tensors = tf.memory().numTensors;
    const sum: Phases = { generation: 0, scoring: 0, training: 0 };
    for (let i = 0; i < steps; i++) {
      const { phases } = await trainer.trainStep();
      for (const k of Object.keys(sum) as (keyof Phases)[]) sum[k] += (phases?.[k] ?? 0) / steps;
    }
    return { ...sum, tensors_stable: tf.memory().numTensors === tensors };
  } finally {
    trainer.dispose();
    for (const m of Object.values(models)) m.dispose();
  }
}

async function main() {
  const backend = await initBackend(args.backend as BackendName | undefined);
  if (args.threads) setNativeThreads(Number(args.threads));
  const kernels = installFastKernels();
  const load = loadavg();
  const steps = Number(args.steps);
  const cached = await timeSteps(true, steps);
  const recomputed = await timeSteps(false, steps);
  const total = (p: Phases) => p.generation + p.scoring + p.training;
  const report = {
    backend: backend.name,
    threads: kernels.native ? nativeThreads() : 1,
    cores: availableParallelism(),
    native_kernels: kernels.native,
    model: "probe: d_model 256, 4 layers, 4 heads, context 128, vocab 256, ReLU, tied",
    rollout: { batch: BATCH, prompt_tokens: PROMPT_TOKENS, answer_tokens: ANSWER_TOKENS },
    steps_measured: steps,
    step_seconds: total(cached),
    generation_seconds: cached.generation,
    scoring_seconds: cached.scoring,
    training_seconds: cached.training,
    generation_share: cached.generation / total(cached),
    generated_tokens_per_s: (BATCH * ANSWER_TOKENS) / cached.generation,
    no_cache: {
      step_seconds: total(recomputed),
      generation_seconds: recomputed.generation,
      generation_share: recomputed.generation / total(recomputed),
    },
    hybrid_generation_speedup: recomputed.generation / cached.generation,
    hybrid_step_speedup: total(recomputed) / total(cached),
    tensors_stable_across_steps: cached.tensors_stable && recomputed.tensors_stable,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    load_average_1m: { start: load[0], end: loadavg()[0] },
  };
  const round = (v: unknown): unknown =>
    typeof v === "number" && !Number.isInteger(v)
      ? Number(v.toPrecision(4))
      : v && typeof v === "object"
        ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, round(x)]))
        : v;
  console.log(JSON.stringify(round(report), null, 2));
}

await main();

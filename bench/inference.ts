// `npm run bench:inference`: the inference service under concurrent chat streams. It saves a
// random probe-size model (GPT, d_model 256, 4 layers, 4 heads, context 256, byte-v2 vocabulary)
// as a checkpoint, starts the service in its own process (services/inference/src/main.ts, as
// production runs it), and drives it with the official openai client at 1, 4, 16 and 64
// concurrent streams: each stream sends streamed chat requests one after another, 64 prompt
// tokens and exactly 128 new tokens each (min_tokens, as vLLM has). Prints one JSON object:
// aggregate tokens/s, time to first token and request latency p50/p95 and the cores the service
// and the clients kept busy per level, the 16-stream / 1-stream throughput and
// time-to-first-token ratios, the dtype the service served the weights in
// (CHATRL_INFERENCE_DTYPE, default auto), and whether issue 7's two goals are met.
//
//   npm run bench:inference -- [--requests N (per stream, default 3)] [--levels 1,4,16,64]
//                              [--cpu-prof DIR (the service runs under node --cpu-prof)]
//
// Postgres: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/chatrl_bench_inference
// (created and migrated if missing; the bench's run is deleted at the end).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { availableParallelism, loadavg } from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { createRun, ensureDatabaseExists, migrate, openDatabase, saveCheckpoint } from "@chatrl/db";
import { GPT, initBackend, MODEL_PRESETS, type ModelConfig, saveModel } from "@chatrl/engine";
import OpenAI from "openai";

const PROMPT_TOKENS = 64;
const NEW_TOKENS = 128;

const { values: args } = parseArgs({
  options: {
    requests: { type: "string", default: "3" },
    levels: { type: "string", default: "1,4,16,64" },
    port: { type: "string", default: "8471" },
    "cpu-prof": { type: "string" },
  },
});
const requestsPerStream = Number(args.requests);
const levels = String(args.levels).split(",").map(Number);

/** The probe shape of issue 3 with the chat vocabulary and room for 64 + 128 tokens. */
const config: ModelConfig = {
  ...MODEL_PRESETS.probe,
  vocabSize: MODEL_PRESETS.tiny.vocabSize,
  tokenizer: MODEL_PRESETS.tiny.tokenizer,
  contextLength: 256,
};

const databaseUrl =
  process.env.DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/chatrl_bench_inference";

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

async function waitForServer(url: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null)
      throw new Error(`the inference service exited (${child.exitCode})`);
    try {
      if ((await fetch(`${url}/healthz`)).ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error("the inference service did not start in 60 s");
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Clock ticks per second of /proc's CPU times (getconf CLK_TCK; 100 on Linux). */
const clockTicks = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" })) || 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system, all threads) a process has used, from /proc; null elsewhere. */
function processCpuSeconds(pid: number | undefined): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // from field 3 (state) on
    return (Number(fields[11]) + Number(fields[12])) / clockTicks; // utime, stime
  } catch {
    return null;
  }
}

type Sample = { ttft: number; latency: number; tokens: number };

/** One streamed request: seconds to the first content and to the end, and tokens generated. */
async function oneRequest(client: OpenAI, model: string, content: string): Promise<Sample> {
  const start = performance.now();
  let first = 0;
  let tokens = 0;
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content }],
    max_tokens: NEW_TOKENS,
    min_tokens: NEW_TOKENS,
    temperature: 1,
    stream: true,
    stream_options: { include_usage: true },
  } as OpenAI.ChatCompletionCreateParamsStreaming);
  for await (const chunk of stream) {
    if (!first && chunk.choices[0]?.delta.content) first = performance.now();
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
  }
  const end = performance.now();
  return { ttft: ((first || end) - start) / 1000, latency: (end - start) / 1000, tokens };
}

/**
 * `streams` clients, each sending `requestsPerStream` requests back to back. The cores the
 * service's process and this one (the clients) kept busy on average tell whether the level
 * was bound by the machine's cores.
 */
async function level(client: OpenAI, model: string, streams: number, serverPid?: number) {
  // 61 bytes of text + <|user|>, <|end|>, <|assistant|> = 64 prompt tokens.
  const prompt = (i: number) =>
    `${i}: ${"the quick brown fox jumps over the lazy dog ".repeat(2)}`.slice(0, PROMPT_TOKENS - 3);
  const samples: Sample[] = [];
  const serverCpuStart = processCpuSeconds(serverPid);
  const clientCpuStart = process.cpuUsage();
  const start = performance.now();
  await Promise.all(
    Array.from({ length: streams }, async (_, s) => {
      for (let r = 0; r < requestsPerStream; r++)
        samples.push(await oneRequest(client, model, prompt(s)));
    }),
  );
  const seconds = (performance.now() - start) / 1000;
  const clientCpu = process.cpuUsage(clientCpuStart);
  const serverCpuEnd = processCpuSeconds(serverPid);
  const tokens = samples.reduce((n, x) => n + x.tokens, 0);
  const ttft = samples.map((x) => x.ttft).sort((a, b) => a - b);
  const latency = samples.map((x) => x.latency).sort((a, b) => a - b);
  return {
    streams,
    requests: samples.length,
    tokens,
    seconds,
    tokens_per_s: tokens / seconds,
    ttft_p50_s: quantile(ttft, 0.5),
    ttft_p95_s: quantile(ttft, 0.95),
    latency_p50_s: quantile(latency, 0.5),
    latency_p95_s: quantile(latency, 0.95),
    server_cpu_cores:
      serverCpuStart === null || serverCpuEnd === null
        ? null
        : (serverCpuEnd - serverCpuStart) / seconds,
    client_cpu_cores: (clientCpu.user + clientCpu.system) / 1e6 / seconds,
  };
}

async function main() {
  const backend = await initBackend();
  await ensureDatabaseExists(databaseUrl);
  const db = await openDatabase({ databaseUrl, dataDir: "./data" });
  await migrate(db);
  const gpt = new GPT(config, 1);
  const parameters = gpt.parameterCount();
  const bytes = await saveModel(gpt, "sft");
  gpt.dispose();
  const run = await createRun(db.prisma, {
    name: "bench:inference",
    spec: {},
    stages: [{ kind: "sft", maxSteps: 1 }],
  });
  await saveCheckpoint(db.prisma, {
    runId: run.id,
    stageId: run.stages[0].id,
    step: 1,
    role: "sft",
    final: true,
    config,
    model: bytes,
  });
  const model = `run-${run.id}-sft`;

  const port = Number(args.port);
  const profile = args["cpu-prof"]
    ? ["--cpu-prof", "--cpu-prof-dir", path.resolve(args["cpu-prof"])]
    : [];
  const server = spawn(
    process.execPath,
    [...profile, "--import", "tsx", "services/inference/src/main.ts"],
    {
      env: {
        ...process.env,
        DATABASE_URL: databaseUrl,
        CHATRL_INFERENCE_PORT: String(port),
        CHATRL_HOST: "127.0.0.1",
        CHATRL_LOG_LEVEL: "warn",
        CHATRL_RATE_LIMIT_MAX: "0", // the bench measures the model, not the rate limiter
        CHATRL_INFERENCE_MAX_ROWS: String(Math.max(64, ...levels)),
      },
      stdio: ["ignore", "inherit", "inherit"],
    },
  );
  const url = `http://127.0.0.1:${port}`;
  const load = loadavg();
  try {
    await waitForServer(url, server);
    const client = new OpenAI({
      baseURL: `${url}/v1`,
      apiKey: "bench",
      maxRetries: 0,
      timeout: 600_000,
    });
    await oneRequest(client, model, "warm up the model"); // loads it
    const results: Awaited<ReturnType<typeof level>>[] = [];
    for (const streams of levels) results.push(await level(client, model, streams, server.pid));
    // The precision the service chose (CHATRL_INFERENCE_DTYPE, default auto), from its metrics.
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const dtype =
      /chatrl_inference_model_dtype_info\{[^}]*dtype="(\w+)"/.exec(metrics)?.[1] ?? null;
    const at = (n: number) => results.find((r) => r.streams === n);
    const one = at(1);
    const sixteen = at(16);
    const report = {
      bench: "inference",
      model: { ...config, parameters },
      backend: backend.name,
      dtype,
      threads: backend.threads,
      cores: availableParallelism(),
      prompt_tokens: PROMPT_TOKENS,
      new_tokens: NEW_TOKENS,
      requests_per_stream: requestsPerStream,
      levels: results,
      throughput_ratio_16_to_1: one && sixteen ? sixteen.tokens_per_s / one.tokens_per_s : null,
      ttft_p50_ratio_16_to_1: one && sixteen ? sixteen.ttft_p50_s / one.ttft_p50_s : null,
      // Issue 7's goals: 16 streams give at least 8x one stream's tokens/s, and their time to
      // first token (p50) is below twice one stream's. null: the levels 1 and 16 were not run.
      goals:
        one && sixteen
          ? {
              throughput_16_at_least_8x_1: sixteen.tokens_per_s >= 8 * one.tokens_per_s,
              ttft_p50_16_below_2x_1: sixteen.ttft_p50_s < 2 * one.ttft_p50_s,
            }
          : null,
      load_average_1m: { start: load[0], end: loadavg()[0] },
    };
    const rounded = JSON.parse(
      JSON.stringify(report, (_, v) =>
        typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v,
      ),
    );
    console.log(JSON.stringify(rounded, null, 2));
  } finally {
    server.kill("SIGTERM");
    await new Promise((resolve) => server.once("exit", resolve));
    await db.prisma.run.delete({ where: { id: run.id } }).catch(() => {});
    await db.close();
  }
}

await main();

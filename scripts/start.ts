// `npm start`: migrations, then api (8080), one worker and inference (8000) in one process.
// `npm start -- --example` (what `npm run quickstart` runs) also trains the polite arithmetic
// example through all three stages (examples/polite-*: SFT, reward model, PPO) with a progress
// bar, prints the eval report (the same as `npm run eval -- --run <id>`), asks the PPO actor
// one question, and keeps serving.
import { readFile } from "node:fs/promises";
import { loadConfigOrExit } from "@chatrl/contracts";
import { createChatrlClient, describeError, evaluateRun, runCli } from "@chatrl/client";
import closeWithGrace from "close-with-grace";
import { type Platform, startPlatform } from "./platform.ts";

const log = (line: string) => console.log(`[chatrl] ${line}`);

// Quiet request logs by default here: the terminal is for the progress of the example run.
const config = loadConfigOrExit({ CHATRL_LOG_LEVEL: "warn", ...process.env });

let platform: Platform;
try {
  platform = await startPlatform(config, { log });
} catch (error) {
  console.error(`[chatrl] could not start: ${error instanceof Error ? error.message : error}`);
  process.exit(1);
}

closeWithGrace({ delay: 15_000 }, async ({ signal, err }) => {
  if (err) console.error("[chatrl] shutting down after an error:", err);
  else log(`${signal ?? "exit"}: shutting down`);
  await platform.close();
});

if (process.argv.includes("--example")) {
  try {
    await runExample(platform);
  } catch (error) {
    console.error(`[chatrl] example run failed: ${describeError(error)}`);
    process.exitCode = 1;
  }
}
log(
  `serving: api ${platform.apiUrl}, chat ${platform.inferenceUrl}/v1/chat/completions (Ctrl-C stops)`,
);

async function runExample({ apiUrl, inferenceUrl }: Platform): Promise<void> {
  const example = (name: string) =>
    readFile(new URL(`../examples/${name}`, import.meta.url), "utf8");
  const apiKey = config.apiKeys[0];
  const api = createChatrlClient({ baseUrl: apiUrl, apiKey });
  const inference = createChatrlClient({ baseUrl: inferenceUrl, apiKey });
  const upload = async (name: string) => {
    const dataset = await api.uploadDataset(name, await example(`${name}.jsonl`));
    log(`uploaded dataset ${dataset.id} (${dataset.rows} ${dataset.format} rows)`);
    return dataset.id;
  };
  const ids: Record<string, string> = {
    SFT_DATASET_ID: await upload("polite-sft"),
    PREFERENCE_DATASET_ID: await upload("polite-preferences"),
  };

  const spec = JSON.parse(await example("polite-rlhf.json"));
  for (const dataset of spec.datasets) dataset.id = ids[dataset.id] ?? dataset.id;
  const run = await api.createRun(spec);
  log(
    `created run ${run.id} (${run.stages.map((s) => s.kind).join(", ")}); following it (the same as \`npm run chatrl -- runs follow ${run.id}\`)`,
  );

  const io = {
    stdin: process.stdin,
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
  };
  const urls = ["--api-url", apiUrl, "--inference-url", inferenceUrl];
  const followed = await runCli([...urls, "runs", "follow", run.id], io);
  if (followed !== 0) throw new Error(`run ${run.id} did not succeed`);

  log(
    `evaluating on the held-out prompts (the same as \`npm run eval -- --run ${run.id}\`); score = share of kind answers`,
  );
  const report = await evaluateRun({ api, inference, runId: run.id, log });
  console.log(JSON.stringify(report, null, 2));

  if (!report.actor) {
    log(`run ${run.id} has no PPO actor to ask: inference serves no run-${run.id}`);
    return;
  }
  const model = report.actor.model;
  const question = "What is 2 times 5?"; // one of the held-out prompts, never trained on
  log(`asking ${model}: ${question}`);
  await runCli(
    [...urls, "chat", "--model", model, "--temperature", "0", "--message", question],
    io,
  );
  log(`chat with it: npm run chatrl -- chat --model ${model}`);
}

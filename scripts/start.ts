// `npm start`: migrations, then api (8080), one worker and inference (8000) in one process.
// `npm start -- --example` also uploads examples/sft-basics.jsonl, trains examples/sft-tiny.json
// end to end with a progress bar, asks the trained model one question, and keeps serving.
import { readFile } from "node:fs/promises";
import { loadConfigOrExit } from "@chatrl/contracts";
import { createChatrlClient, describeError, runCli } from "@chatrl/client";
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
  const api = createChatrlClient({ baseUrl: apiUrl, apiKey: config.apiKeys[0] });
  const jsonl = await readFile(new URL("../examples/sft-basics.jsonl", import.meta.url), "utf8");
  const dataset = await api.uploadDataset("sft-basics", jsonl);
  log(`uploaded dataset ${dataset.id} (${dataset.rows} ${dataset.format} rows)`);

  const spec = JSON.parse(
    await readFile(new URL("../examples/sft-tiny.json", import.meta.url), "utf8"),
  );
  spec.datasets[0].id = dataset.id;
  const run = await api.createRun(spec);
  log(
    `created run ${run.id}; following it (the same as \`npm run chatrl -- runs follow ${run.id}\`)`,
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

  const model = (await api.getRun(run.id)).fine_tuned_model;
  if (!model) throw new Error(`run ${run.id} succeeded but names no model to chat with`);
  const question = "What is 2 plus 3?";
  log(`asking ${model}: ${question}`);
  await runCli(
    [...urls, "chat", "--model", model, "--temperature", "0", "--message", question],
    io,
  );
  log(`chat with it: npm run chatrl -- chat --model ${model}`);
}

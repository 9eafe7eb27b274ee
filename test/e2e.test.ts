// One run through every service over HTTP, on the real Postgres and Redis: upload the example
// dataset, train a tiny SFT run, check its checkpoint and metrics, chat with the result.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { type components, loadConfig } from "@chatrl/contracts";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Platform, startPlatform } from "../scripts/platform.ts";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { createTestRedis, type TestRedis } from "./support/redis.ts";

let database: TestDatabase;
let redis: TestRedis;
let platform: Platform;

beforeAll(async () => {
  database = await createTestDatabase();
  redis = await createTestRedis();
  const config = loadConfig({
    DATABASE_URL: database.url,
    REDIS_URL: redis.url,
    CHATRL_QUEUE_PREFIX: redis.prefix,
    CHATRL_HOST: "127.0.0.1",
    CHATRL_LOG_LEVEL: "silent",
  });
  platform = await startPlatform({ ...config, apiPort: 0, inferencePort: 0 });
});

afterAll(async () => {
  await platform?.close();
  await redis?.cleanup();
  await database?.drop();
});

async function api(path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${platform.apiUrl}${path}`, init);
}

type Schemas = components["schemas"];

async function json<T>(res: Response, status: number): Promise<T> {
  const body = await res.text();
  expect(res.status, body).toBe(status);
  return JSON.parse(body) as T;
}

describe("a supervised fine-tuning run, end to end", () => {
  it("trains the example dataset, stores a verifiable checkpoint and serves it for chat", async () => {
    const jsonl = await readFile(new URL("../examples/sft-basics.jsonl", import.meta.url), "utf8");
    const dataset = await json<Schemas["Dataset"]>(
      await api("/v1/datasets?name=sft-basics", {
        method: "POST",
        headers: { "content-type": "application/x-ndjson" },
        body: jsonl,
      }),
      201,
    );
    expect(dataset).toMatchObject({ object: "dataset", format: "supervised", rows: 60 });

    const spec = {
      name: "e2e",
      model: { preset: "tiny" },
      datasets: [{ id: dataset.id, weight: 1 }],
      data_split: [10, 0, 0],
      stages: {
        sft: {
          max_steps: 40,
          batch_size: 8,
          learning_rate: 0.003,
          max_seq_len: 64,
          epochs: 10,
          checkpoint_every: 20,
        },
      },
      compute: { device: "cpu", price_per_hour: 2 },
      seed: 7,
    };
    const created = await json<Schemas["Run"]>(
      await api("/v1/runs", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(spec),
      }),
      201,
    );
    expect(created).toMatchObject({ object: "run", status: "queued", fine_tuned_model: null });

    let run = created;
    for (let i = 0; i < 600 && !["succeeded", "failed", "cancelled"].includes(run.status); i++) {
      await sleep(250);
      run = await json<Schemas["Run"]>(await api(`/v1/runs/${created.id}`), 200);
    }
    expect(run.status, JSON.stringify(run)).toBe("succeeded");
    const [sft] = run.stages;
    expect(sft).toMatchObject({ kind: "sft", status: "succeeded", progress: 1 });
    expect(sft.device_seconds).toBeGreaterThan(0);
    expect(sft.tokens).toBeGreaterThan(0);
    expect(sft.cost_usd).toBeCloseTo((2 * sft.device_seconds) / 3600, 6);

    const checkpoints = await json<Schemas["CheckpointList"]>(
      await api(`/v1/runs/${run.id}/checkpoints`),
      200,
    );
    const steps = checkpoints.data
      .map((c: { step: number }) => c.step)
      .sort((a: number, b: number) => a - b);
    expect(steps).toEqual([20, 40]);
    const final = checkpoints.data.find((c) => c.step === 40);
    if (!final) throw new Error("no final checkpoint at step 40");
    const content = await api(`/v1/checkpoints/${final.id}/content`);
    expect(content.status).toBe(200);
    const bytes = Buffer.from(await content.arrayBuffer());
    expect(bytes.length).toBe(final.bytes);
    expect(createHash("sha256").update(bytes).digest("hex")).toBe(final.sha256);

    const metrics = await json<Schemas["MetricList"]>(
      await api(`/v1/runs/${run.id}/metrics?stage=sft&name=loss`),
      200,
    );
    const losses = metrics.data.map((m: { value: number }) => m.value);
    expect(losses.length).toBeGreaterThanOrEqual(3);
    expect(losses.at(-1)).toBeLessThan(losses[0] * 0.8);

    const models = await json<Schemas["ModelList"]>(
      await fetch(`${platform.inferenceUrl}/v1/models`),
      200,
    );
    const model = `run-${run.id}-sft`;
    expect(run.fine_tuned_model).toBe(model);
    expect(models.data.map((m: { id: string }) => m.id)).toContain(model);

    const completion = await json<Schemas["ChatCompletion"]>(
      await fetch(`${platform.inferenceUrl}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model,
          messages: [{ role: "user", content: "What is 2 plus 3?" }],
          max_tokens: 24,
          temperature: 0,
        }),
      }),
      200,
    );
    const text: string = completion.choices[0].message.content;
    expect(text.length).toBeGreaterThan(0);
    expect(completion.usage.completion_tokens).toBeGreaterThan(0);
    expect(completion.usage.total_tokens).toBe(
      completion.usage.prompt_tokens + completion.usage.completion_tokens,
    );

    const costs = await json<Schemas["CostSummary"]>(
      await api("/v1/dashboard/costs?group_by=run"),
      200,
    );
    const row = costs.data.find((r) => r.key === run.id);
    if (!row) throw new Error(`no cost row for ${run.id}`);
    expect(row.cost_usd).toBeCloseTo(sft.cost_usd, 6);
  });
});

// The inference service's /metrics against a real test database holding a real tiny model.
import { loadConfig } from "@chatrl/contracts";
import { autoDecodeDtype, GPT, MODEL_PRESETS, saveModel } from "@chatrl/engine";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { saveServedSft } from "../../../test/support/served-model.ts";
import { promSample } from "../../../test/support/prometheus.ts";
import { buildInferenceApp } from "../src/app.ts";

const config = loadConfig({ CHATRL_LOG_LEVEL: "silent", CHATRL_API_KEYS: "sk-infer" });

let testDb: TestDatabase;
let app: FastifyInstance;

beforeAll(async () => {
  testDb = await createTestDatabase();
  app = await buildInferenceApp(config, { db: testDb.db });
});
afterAll(async () => {
  await app?.close();
  await testDb?.drop();
});

async function tinyRun(): Promise<{ model: string; checkpointId: string; bytes: number }> {
  const gpt = new GPT(MODEL_PRESETS.tiny, 7);
  const model = await saveModel(gpt);
  gpt.dispose();
  const served = await saveServedSft(testDb.db.prisma, model, MODEL_PRESETS.tiny, "metrics");
  return { model: served.modelId, checkpointId: served.checkpointId, bytes: model.byteLength };
}

describe("inference metrics", () => {
  it("counts requests and tokens, times first tokens, and shows batches and loaded models", async () => {
    const { model, checkpointId } = await tinyRun();
    const before = (await app.inject({ url: "/metrics" })).body;
    expect(promSample(before, "chatrl_inference_loaded_models")).toBe(0);

    // Three requests at once share the model's batch.
    const replies = await Promise.all(
      [1, 2, 3].map((seed) =>
        app.inject({
          method: "POST",
          url: "/v1/chat/completions",
          headers: { authorization: "Bearer sk-infer" },
          payload: {
            model,
            messages: [{ role: "user", content: `Hello ${seed}` }],
            max_tokens: 6,
            seed,
          },
        }),
      ),
    );
    for (const r of replies) expect(r.statusCode, r.body).toBe(200);
    const completion = replies.reduce((n, r) => n + r.json().usage.completion_tokens, 0);
    const prompt = replies.reduce((n, r) => n + r.json().usage.prompt_tokens, 0);

    // Scraped without a key, as Prometheus does.
    const response = await app.inject({ url: "/metrics" });
    expect(response.statusCode).toBe(200);
    const text = response.body;
    const labels = { model };
    expect(promSample(text, "chatrl_inference_requests_total", labels)).toBe(3);
    expect(promSample(text, "chatrl_inference_completion_tokens_total", labels)).toBe(completion);
    expect(promSample(text, "chatrl_inference_prompt_tokens_total", labels)).toBe(prompt);
    expect(promSample(text, "chatrl_inference_time_to_first_token_seconds_count", labels)).toBe(3);
    expect(promSample(text, "chatrl_inference_request_duration_seconds_count", labels)).toBe(3);
    // Every decode step is one observation of how many rows it generated.
    const steps = promSample(text, "chatrl_inference_batch_rows_count", labels) as number;
    const rows = promSample(text, "chatrl_inference_batch_rows_sum", labels) as number;
    expect(steps).toBeGreaterThan(0);
    expect(rows).toBeGreaterThanOrEqual(completion - 3);
    expect(promSample(text, "chatrl_inference_loaded_models")).toBe(1);
    const bytes = promSample(text, "chatrl_inference_loaded_model_bytes", {
      model,
      checkpoint: checkpointId,
    });
    expect(bytes).toBeGreaterThan(0);
    expect(promSample(text, "chatrl_inference_loaded_bytes")).toBe(bytes);
    // Served in the dtype "auto" picks on this machine (bfloat16 where AMX or AVX-512 BF16 multiplies it).
    const dtypeInfo = { model, checkpoint: checkpointId, dtype: autoDecodeDtype() };
    expect(promSample(text, "chatrl_inference_model_dtype_info", dtypeInfo)).toBe(1);
    expect(promSample(text, "chatrl_inference_batch_occupancy", labels)).toBe(0);
    expect(promSample(text, "chatrl_inference_model_loads_total")).toBe(1);
    expect(
      promSample(text, "http_requests_total", {
        route: "/v1/chat/completions",
        status_code: "200",
      }),
    ).toBe(3);
    expect(promSample(text, "process_resident_memory_bytes")).toBeGreaterThan(0);
    expect(text).toMatch(/service="inference"/);
  });
});

// `chatrl chat` against a listening inference service serving a real tiny checkpoint.
import { type AddressInfo, createServer } from "node:net";
import { loadConfig } from "@chatrl/contracts";
import { GPT, MODEL_PRESETS, saveModel } from "@chatrl/engine";
import { buildInferenceApp } from "@chatrl/inference";
import type { FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { saveServedSft } from "../../../test/support/served-model.ts";
import { createChatrlClient } from "../src/index.ts";
import { cli } from "./cli-io.ts";

/** A port nothing listens on: one the OS just handed out and we closed again. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

let testDb: TestDatabase;
let app: FastifyInstance;
let url: string;
let modelId: string;
const requests: { messages: { role: string; content: string }[] }[] = [];

beforeAll(async () => {
  testDb = await createTestDatabase();
  app = await buildInferenceApp(loadConfig({ CHATRL_LOG_LEVEL: "silent" }), { db: testDb.db });
  // Record what the CLI sends, to see the conversation history it keeps.
  app.addHook("preHandler", async (request) => {
    if (request.url === "/v1/chat/completions") requests.push(request.body as never);
  });
  url = await app.listen({ port: 0, host: "127.0.0.1" });

  const model = new GPT(MODEL_PRESETS.tiny, 11);
  const bytes = await saveModel(model);
  model.dispose();
  ({ modelId } = await saveServedSft(testDb.db.prisma, bytes, MODEL_PRESETS.tiny, "cli chat"));
});

afterAll(async () => {
  await app?.close();
  await testDb?.drop();
});

describe("chatrl chat", () => {
  it("prints the streamed reply to one --message, the same text the API returns for that seed", async () => {
    const args = [
      "chat",
      "--model",
      modelId,
      "--message",
      "Hi!",
      "--seed",
      "4",
      "--max-tokens",
      "10",
    ];
    const result = await cli(["--inference-url", url, ...args]);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    const client = createChatrlClient({ baseUrl: url });
    const completion = await client.createChatCompletion({
      model: modelId,
      messages: [{ role: "user", content: "Hi!" }],
      seed: 4,
      max_tokens: 10,
    });
    expect(result.stdout).toBe(`${completion.choices[0].message.content}\n`);
  });

  it("lists the served models", async () => {
    const result = await cli(["--inference-url", url, "models"]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(
      new RegExp(`^ID\\s+CREATED\\s+CONTEXT\n${modelId}\\s+\\d{4}-\\d\\d-\\d\\d [\\d:]+\\s+128\n$`),
    );
  });

  it("finds the inference service through CHATRL_INFERENCE_URL", async () => {
    const result = await cli(["chat", "--model", modelId, "--message", "Hi", "--max-tokens", "2"], {
      env: { CHATRL_INFERENCE_URL: url },
    });
    expect(result.code).toBe(0);
  });

  it("keeps the conversation history across interactive turns", async () => {
    requests.length = 0;
    const result = await cli(
      [
        "--inference-url",
        url,
        "chat",
        "--model",
        modelId,
        "--max-tokens",
        "4",
        "--system",
        "Be kind.",
      ],
      { stdinLines: ["Hello", "Tell me more", "/exit"] },
    );
    expect(result.code).toBe(0);
    expect(result.stdout.match(/assistant> /g)).toHaveLength(2);
    expect(requests).toHaveLength(2);
    const [first, second] = requests.map((r) => r.messages);
    expect(first).toEqual([
      { role: "system", content: "Be kind." },
      { role: "user", content: "Hello" },
    ]);
    expect(second.slice(0, 2)).toEqual(first);
    expect(second[2].role).toBe("assistant");
    expect(second[3]).toEqual({ role: "user", content: "Tell me more" });
    // What the assistant said in turn one is what the user saw printed.
    expect(result.stdout).toContain(`assistant> ${second[2].content}\n`);
  });

  it("prints an unknown model as one clear error line and exits 1", async () => {
    const result = await cli([
      "--inference-url",
      url,
      "chat",
      "--model",
      "nope",
      "--message",
      "Hi",
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(
      "error: 404 model_not_found (param: model): The model 'nope' does not exist\n",
    );
  });

  it("says which URL it could not reach", async () => {
    const closed = `http://127.0.0.1:${await closedPort()}`;
    const result = await cli([
      "--inference-url",
      closed,
      "chat",
      "--model",
      modelId,
      "--message",
      "Hi",
    ]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`error: cannot reach ${closed} (ECONNREFUSED)\n`);
  });
});

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SFT_JSONL, startTestApi, type TestApi, uploadDataset } from "./helpers.ts";

let api: TestApi;

beforeAll(async () => {
  api = await startTestApi({ CHATRL_MAX_UPLOAD_BYTES: "4096" });
});
afterAll(async () => {
  await api?.close();
});

async function storedCounts() {
  const prisma = api.database.db.prisma;
  return { datasets: await prisma.dataset.count(), rows: await prisma.datasetRow.count() };
}

/** Asserts a refused upload: the status, the error shape, and that nothing was stored. */
async function expectRefused(body: string, status: number, message: RegExp, contentType?: string) {
  const before = await storedCounts();
  const response = await api.app.inject({
    method: "POST",
    url: "/v1/datasets?name=bad",
    headers: { "content-type": contentType ?? "application/x-ndjson" },
    payload: body,
  });
  expect(response.statusCode).toBe(status);
  const { error } = response.json();
  expect(error.message).toMatch(message);
  expect(error).toHaveProperty("type");
  expect(error).toHaveProperty("param");
  expect(error).toHaveProperty("code");
  expect(response.body).not.toMatch(/at .*\.ts:\d+/);
  expect(await storedCounts()).toEqual(before);
  return error;
}

describe("POST /v1/datasets", () => {
  it("stores a supervised upload and reports its format and row count", async () => {
    const response = await uploadDataset(api.app, `${SFT_JSONL}\n`, "sft basics");
    expect(response.statusCode).toBe(201);
    const dataset = response.json();
    expect(dataset).toMatchObject({
      object: "dataset",
      name: "sft basics",
      format: "supervised",
      rows: 2,
    });
    expect(dataset.id).toMatch(/^ds_[0-9a-f]{24}$/);
    expect(Number.isInteger(dataset.created_at)).toBe(true);
    const rows = await api.database.db.prisma.datasetRow.findMany({
      where: { datasetId: dataset.id },
      orderBy: { index: "asc" },
    });
    expect(rows.map((r) => r.data)).toEqual([
      { prompt: "What is 2 plus 2?", response: "4." },
      { prompt: "Capital of Norway?", response: "Oslo." },
    ]);
  });

  it("accepts application/jsonl and a charset parameter", async () => {
    for (const contentType of ["application/jsonl", "application/x-ndjson; charset=utf-8"]) {
      const response = await api.app.inject({
        method: "POST",
        url: "/v1/datasets?name=typed",
        headers: { "content-type": contentType },
        payload: SFT_JSONL,
      });
      expect(response.statusCode, contentType).toBe(201);
    }
  });

  it("stores a preference upload", async () => {
    const body = [
      '{"prompt":"Capital of France?","chosen":"Paris.","rejected":"No idea."}',
      '{"prompt":"Capital of Italy?","chosen":"Rome.","rejected":"No idea."}',
      '{"prompt":"Capital of Spain?","chosen":"Madrid.","rejected":"No idea."}',
    ].join("\n");
    const response = await uploadDataset(api.app, body, "prefs");
    expect(response.statusCode).toBe(201);
    expect(response.json()).toMatchObject({ format: "preference", rows: 3 });
  });

  it("stores a chat upload", async () => {
    const row = {
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hello!" },
        { role: "assistant", content: "Hi." },
      ],
    };
    const response = await uploadDataset(api.app, JSON.stringify(row), "chat");
    expect(response.statusCode).toBe(201);
    expect(response.json()).toMatchObject({ format: "chat", rows: 1 });
  });

  it("skips blank lines but counts them in line numbers", async () => {
    const ok = await uploadDataset(api.app, `\n${SFT_JSONL}\n\n\n`, "blank lines");
    expect(ok.statusCode).toBe(201);
    expect(ok.json().rows).toBe(2);
    const error = await expectRefused(
      `${SFT_JSONL}\n\n{"prompt":"x"}`,
      400,
      /line 4: unknown row shape/,
    );
    expect(error).toMatchObject({ param: "body", code: "invalid_jsonl" });
  });

  it("refuses a line of broken JSON, naming the line, and stores nothing", async () => {
    await expectRefused(
      `${SFT_JSONL}\n{"prompt": "a", "response": `,
      400,
      /line 3: not valid JSON/,
    );
  });

  it("refuses rows of an unknown shape", async () => {
    await expectRefused('{"question":"a","answer":"b"}', 400, /line 1: unknown row shape/);
  });

  it("refuses empty strings and mixed formats", async () => {
    await expectRefused(
      '{"prompt":"a","response":""}',
      400,
      /line 1: .*'response' must be a non-empty string/,
    );
    await expectRefused(
      `${SFT_JSONL}\n{"prompt":"a","chosen":"b","rejected":"c"}`,
      400,
      /line 3: row is in preference format/,
    );
  });

  it("refuses an upload with no rows", async () => {
    await expectRefused("\n\n", 400, /no rows/);
  });

  it("refuses a body over the configured limit with 413", async () => {
    const line = '{"prompt":"a long prompt to fill the body","response":"and its answer"}\n';
    const error = await expectRefused(line.repeat(100), 413, /too large/i);
    expect(error).toMatchObject({ type: "invalid_request_error", code: "body_too_large" });
  });

  it("refuses a JSON body with 415 and a missing name with 400", async () => {
    await expectRefused(
      '{"prompt":"a","response":"b"}',
      415,
      /application\/x-ndjson/,
      "application/json",
    );
    const response = await api.app.inject({
      method: "POST",
      url: "/v1/datasets",
      headers: { "content-type": "application/x-ndjson" },
      payload: SFT_JSONL,
    });
    expect(response.statusCode).toBe(400);
    expect(response.json().error).toMatchObject({ param: "name" });
    expect(response.json().error.message).toContain("'name'");
  });
});

describe("GET /v1/datasets", () => {
  it("lists datasets newest first, a page at a time, and gets one by id", async () => {
    const first = await api.app.inject({ url: "/v1/datasets?limit=2" });
    expect(first.statusCode).toBe(200);
    const page1 = first.json();
    expect(page1.object).toBe("list");
    expect(page1.data).toHaveLength(2);
    expect(page1.has_more).toBe(true);
    const all = (await api.app.inject({ url: "/v1/datasets?limit=100" })).json();
    expect(all.data.map((d: { id: string }) => d.id).slice(0, 2)).toEqual(
      page1.data.map((d: { id: string }) => d.id),
    );
    const page2 = (
      await api.app.inject({ url: `/v1/datasets?limit=2&after=${page1.data[1].id}` })
    ).json();
    expect(page2.data[0].id).toBe(all.data[2].id);

    const one = await api.app.inject({ url: `/v1/datasets/${all.data[0].id}` });
    expect(one.json()).toEqual(all.data[0]);
  });

  it("answers 404 in the error shape for an unknown id", async () => {
    const response = await api.app.inject({ url: `/v1/datasets/ds_${"0".repeat(24)}` });
    expect(response.statusCode).toBe(404);
    expect(response.json()).toEqual({
      error: {
        message: `No dataset with id 'ds_${"0".repeat(24)}'`,
        type: "not_found_error",
        param: "id",
        code: "not_found",
      },
    });
  });

  it("refuses limits out of range", async () => {
    const response = await api.app.inject({ url: "/v1/datasets?limit=1000" });
    expect(response.statusCode).toBe(400);
    expect(response.json().error).toMatchObject({ param: "limit" });
  });
});

// Inputs that reached Postgres or the queue in a shape they could not take, found in review.
import type { LightMyRequestResponse } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createDatasetId, runBody, startTestApi, type TestApi, uploadDataset } from "./helpers.ts";

let api: TestApi;
let datasetId: string;
let runId: string;

beforeAll(async () => {
  api = await startTestApi();
  datasetId = await createDatasetId(api.app);
  const run = await api.app.inject({
    method: "POST",
    url: "/v1/runs",
    payload: runBody(datasetId),
  });
  runId = run.json().id;
});
afterAll(async () => {
  await api?.close();
});

async function storedCounts() {
  const prisma = api.database.db.prisma;
  return { datasets: await prisma.dataset.count(), runs: await prisma.run.count() };
}

describe("text Postgres cannot store", () => {
  it("answers 400 naming the field, not 500, for a NUL character or a lone surrogate anywhere", async () => {
    const before = await storedCounts();
    const cases: [() => Promise<LightMyRequestResponse>, string, RegExp][] = [
      [
        () => uploadDataset(api.app, '{"prompt":"a","response":"b\\u0000"}'),
        "body",
        /line 1: supervised row: 'response' must not contain a NUL character/,
      ],
      [
        () => uploadDataset(api.app, '{"prompt":"a\\ud800","response":"b"}'),
        "body",
        /line 1: supervised row: 'prompt' must not contain an unpaired UTF-16 surrogate/,
      ],
      [
        () => uploadDataset(api.app, '{"prompt":"a","response":"b"}', "a\u0000b"),
        "name",
        /'name' must not contain a NUL character/,
      ],
      [
        () =>
          api.app.inject({
            method: "POST",
            url: "/v1/runs",
            payload: runBody(datasetId, { name: "x\u0000" }),
          }),
        "name",
        /'name' must not contain a NUL character/,
      ],
      [
        () =>
          api.app.inject({
            method: "POST",
            url: "/v1/runs",
            payload: runBody(datasetId, { compute: { device: "gpu\ud800" } }),
          }),
        "compute.device",
        /'compute.device' must not contain an unpaired UTF-16 surrogate/,
      ],
      [() => api.app.inject({ method: "GET", url: "/v1/runs/a%00b" }), "id", /'id' must not/],
      [() => api.app.inject({ method: "GET", url: "/v1/runs?after=a%00b" }), "after", /'after'/],
      [
        () => api.app.inject({ method: "GET", url: `/v1/runs/${runId}/metrics?name=lo%00ss` }),
        "name",
        /'name' must not/,
      ],
      [
        () => api.app.inject({ method: "GET", url: "/v1/checkpoints/ckpt%00/content" }),
        "id",
        /'id' must not/,
      ],
    ];
    for (const [request, param, message] of cases) {
      const response = await request();
      expect(response.statusCode, response.body).toBe(400);
      const { error } = response.json();
      expect(error.message).toMatch(message);
      expect(error.param).toBe(param);
      expect(error.type).toBe("invalid_request_error");
    }
    expect(await storedCounts()).toEqual(before);
  });

  it("keeps characters written as surrogate-pair escapes", async () => {
    const response = await uploadDataset(api.app, '{"prompt":"\\ud83d\\ude00","response":"ok"}');
    expect(response.statusCode).toBe(201);
    const rows = await api.database.db.prisma.datasetRow.findMany({
      where: { datasetId: response.json().id },
    });
    expect(rows.map((r) => r.data)).toEqual([{ prompt: "\u{1F600}", response: "ok" }]);
  });
});

describe("list cursors", () => {
  it("refuses an after that is not an item of the list with 400, instead of an empty last page", async () => {
    const cases = [
      ["/v1/datasets", runId, /no dataset/],
      ["/v1/runs", datasetId, /no run/],
      ["/v1/runs", "run_000000000000000000000000", /no run 'run_000000000000000000000000'/],
    ] as const;
    for (const [url, after, message] of cases) {
      const response = await api.app.inject({ method: "GET", url: `${url}?after=${after}` });
      expect(response.statusCode, response.body).toBe(400);
      const { error } = response.json();
      expect(error).toMatchObject({ param: "after", code: "invalid_cursor" });
      expect(error.message).toMatch(message);
    }
  });

  it("pages through items created in the same millisecond without skipping or repeating one", async () => {
    const prisma = api.database.db.prisma;
    const ids = [datasetId];
    for (let i = 0; i < 4; i++) ids.push(await createDatasetId(api.app));
    await prisma.dataset.updateMany({ data: { createdAt: new Date("2026-01-01T00:00:00Z") } });
    const seen: string[] = [];
    let after = "";
    for (;;) {
      const response = await api.app.inject({
        method: "GET",
        url: `/v1/datasets?limit=2${after ? `&after=${after}` : ""}`,
      });
      const page = response.json();
      seen.push(...page.data.map((d: { id: string }) => d.id));
      if (!page.has_more) break;
      after = page.data.at(-1).id;
    }
    expect(seen).toHaveLength(await prisma.dataset.count());
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual(expect.arrayContaining(ids));
  });
});

describe("Idempotency-Key", () => {
  it("answers 409 to the loser of two concurrent submissions that share a key but not a body", async () => {
    const prisma = api.database.db.prisma;
    for (let i = 0; i < 5; i++) {
      const headers = { "idempotency-key": `race-${i}` };
      const post = (name: string) =>
        api.app.inject({
          method: "POST",
          url: "/v1/runs",
          headers,
          payload: runBody(datasetId, { name }),
        });
      const answers = await Promise.all([post("first"), post("second")]);
      expect(answers.map((a) => a.statusCode).sort()).toEqual([201, 409]);
      const created = answers.find((a) => a.statusCode === 201)?.json();
      expect(await prisma.run.findMany({ where: { idempotencyKey: `race-${i}` } })).toEqual([
        expect.objectContaining({ id: created.id, name: created.name }),
      ]);
    }
  });

  it("takes a retry whose body differs only by a negative zero as the same run", async () => {
    const headers = { "idempotency-key": "negative-zero" };
    const body = JSON.stringify(runBody(datasetId)).replace(
      '"price_per_hour":0.5',
      '"price_per_hour":-0',
    );
    const post = () =>
      api.app.inject({
        method: "POST",
        url: "/v1/runs",
        headers: { ...headers, "content-type": "application/json" },
        payload: body,
      });
    const first = await post();
    expect(first.statusCode, first.body).toBe(201);
    const retry = await post();
    expect(retry.statusCode, retry.body).toBe(200);
    expect(retry.json().id).toBe(first.json().id);
  });
});

describe("run specs", () => {
  it("refuses a datasets list that repeats an id with 422 naming the repeat, and stores nothing", async () => {
    const before = await storedCounts();
    const response = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: runBody(datasetId, { datasets: [{ id: datasetId }, { id: datasetId, weight: 2 }] }),
    });
    expect(response.statusCode, response.body).toBe(422);
    expect(response.json().error).toMatchObject({
      param: "datasets[1].id",
      message: expect.stringContaining(`repeats datasets[0].id '${datasetId}'`),
    });
    expect(await storedCounts()).toEqual(before);
  });
});

describe("data_split", () => {
  it("refuses with 422 a split that leaves a trained stage no rows of a small dataset, and stores nothing", async () => {
    // An sft-only run gives sft every row whatever the split: the reward and ppo shares count
    // as 0 for a run that does not train them (before reward and ppo existed, [2, 4, 4] left
    // sft round(2 * 2 / 10) = 0 of these two rows and was refused).
    const { data_split: _, ...withDefaultSplit } = runBody(datasetId);
    const sftOnly = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: withDefaultSplit,
    });
    expect(sftOnly.statusCode, sftOnly.body).toBe(201);

    const pairs = [1, 2, 3].map((i) => `{"prompt":"q${i}","chosen":"yes","rejected":"no"}`);
    const preference = (await uploadDataset(api.app, pairs.join("\n"), "pairs")).json().id;
    const sftAndReward = (data_split: number[]) =>
      runBody(preference, { data_split, stages: { sft: {}, reward: {} } });
    const before = await storedCounts();
    // Three rows, [1, 9, 0]: sft gets round(3 * 1 / 10) = 0 of them.
    const response = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: sftAndReward([1, 9, 0]),
    });
    expect(response.statusCode, response.body).toBe(422);
    expect(response.json().error).toMatchObject({
      param: "data_split",
      message: expect.stringMatching(/give the sft stage 0 rows/),
    });
    expect(await storedCounts()).toEqual(before);
    const enough = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: sftAndReward([1, 2, 0]), // sft round(3 * 1 / 3) = 1 row, reward the other 2
    });
    expect(enough.statusCode, enough.body).toBe(201);
  });
});

describe("JSON bodies", () => {
  it("cancels a run when the request says application/json but sends no body, as curl does", async () => {
    const run = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: runBody(datasetId),
    });
    const response = await api.app.inject({
      method: "POST",
      url: `/v1/runs/${run.json().id}/cancel`,
      headers: { "content-type": "application/json" },
    });
    expect(response.statusCode, response.body).toBe(200);
    expect(response.json().status).toBe("cancelled");
    // A route that needs a body still refuses an empty one, and broken JSON stays a 400.
    for (const payload of ["", "{nope"]) {
      const refused = await api.app.inject({
        method: "POST",
        url: "/v1/runs",
        headers: { "content-type": "application/json" },
        payload,
      });
      expect(refused.statusCode, refused.body).toBe(400);
      expect(refused.json().error.type).toBe("invalid_request_error");
    }
  });
});

// Abuse and exposure: bad bytes and media types on upload, malformed paths, what /readyz tells
// strangers, security headers, form posts, rate limits shared by replicas, and slow clients.
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { loadConfig, rateLimitBlock } from "@chatrl/contracts";
import { openDatabase } from "@chatrl/db";
import type { FastifyInstance } from "fastify";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { freePort } from "../../../test/support/process.ts";
import { buildInferenceApp } from "../../inference/src/app.ts";
import { buildApp } from "../src/app.ts";
import { createDatasetId, runBody, startTestApi, type TestApi, uploadDataset } from "./helpers.ts";

let api: TestApi;
beforeAll(async () => {
  api = await startTestApi();
});
afterAll(async () => {
  await api?.close();
});

const upload = (payload: string | Buffer, contentType: string) =>
  api.app.inject({
    method: "POST",
    url: "/v1/datasets?name=bytes",
    headers: { "content-type": contentType },
    payload,
  });

describe("dataset uploads", () => {
  it("refuses invalid UTF-8 with a 400 naming the line, and stores nothing", async () => {
    const body = Buffer.concat([
      Buffer.from('{"prompt":"tea","response":"b"}\n'),
      Buffer.from('{"prompt":"caf'),
      Buffer.from([0xe9]),
      Buffer.from('","response":"b"}\n'),
    ]);
    const res = await upload(body, "application/x-ndjson");
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().error).toEqual({
      message: "Invalid JSONL: line 2: not valid UTF-8",
      type: "invalid_request_error",
      param: "body",
      code: "invalid_utf8",
    });
    expect(await api.database.db.prisma.dataset.count({ where: { name: "bytes" } })).toBe(0);
  });

  it("keeps accented text sent as UTF-8, with or without charset=utf-8", async () => {
    for (const type of ["application/x-ndjson", "application/x-ndjson; charset=UTF-8"]) {
      const res = await upload('{"prompt":"café","response":"oui"}\n', type);
      expect(res.statusCode, res.body).toBe(201);
    }
  });

  it("answers 415 to a charset other than UTF-8", async () => {
    const res = await upload(
      '{"prompt":"a","response":"b"}\n',
      "application/x-ndjson; charset=latin1",
    );
    expect(res.statusCode).toBe(415);
    expect(res.json().error).toMatchObject({
      message: "Uploads must be UTF-8; got charset=latin1",
      code: "unsupported_charset",
    });
  });

  it("tells a client sending application/json that uploads are application/x-ndjson", async () => {
    for (const payload of ['{"prompt":"a","response":"b"}\n{"prompt":"c","response":"d"}', "[1]"]) {
      const res = await upload(payload, "application/json");
      expect(res.statusCode).toBe(415);
      expect(res.json().error.message).toMatch(/Content-Type: application\/x-ndjson/);
      expect(res.json().error.message).not.toMatch(/not valid JSON/);
    }
  });
});

describe("malformed percent-encoding in a path", () => {
  it("is a 400 in the documented error shape on the api and on inference", async () => {
    const inference = await buildInferenceApp(
      loadConfig({ DATABASE_URL: api.database.url, CHATRL_LOG_LEVEL: "silent" }),
      { db: api.database.db },
    );
    try {
      for (const app of [api.app, inference]) {
        for (const url of ["/v1/runs/%ff", "/v1/models/%E0%A4%A"]) {
          const res = await app.inject({ url });
          expect(res.statusCode, url).toBe(400);
          expect(res.json()).toEqual({
            error: {
              message: "The request path is not valid: it holds malformed percent-encoding",
              type: "invalid_request_error",
              param: null,
              code: "invalid_path",
            },
          });
        }
      }
    } finally {
      await inference.close();
    }
  });
});

describe("/readyz", () => {
  it("says which dependency is down, and why (hosts and ports) only to a caller with a key", async () => {
    const deadRedis = `redis://127.0.0.1:${await freePort()}`;
    const config = loadConfig({
      DATABASE_URL: api.database.url,
      REDIS_URL: deadRedis,
      CHATRL_API_KEYS: "ops-key",
      CHATRL_QUEUE_PREFIX: api.redis.prefix,
      CHATRL_LOG_LEVEL: "silent",
    });
    const app = await buildApp(config, { db: api.database.db, flow: api.flow, queues: api.queues });
    try {
      const open = await app.inject({ url: "/readyz" });
      expect(open.statusCode).toBe(503);
      expect(open.json().error.message).toBe("Not ready: redis");
      const keyed = await app.inject({
        url: "/readyz",
        headers: { authorization: "Bearer ops-key" },
      });
      expect(keyed.json().error.message).toMatch(
        /^Not ready: redis: Redis at redis:\/\/127\.0\.0\.1:\d+ is unreachable/,
      );
    } finally {
      await app.close();
    }
  });
});

describe("headers and forms", () => {
  it("sends security headers on every response and a strict Content-Security-Policy", async () => {
    for (const url of ["/healthz", "/v1/runs", "/v1/nothing", "/dashboard"]) {
      const res = await api.app.inject({ url });
      expect(res.headers["x-content-type-options"], url).toBe("nosniff");
      expect(res.headers["x-frame-options"], url).toBe("SAMEORIGIN");
      expect(res.headers["referrer-policy"], url).toBe("no-referrer");
      const csp = String(res.headers["content-security-policy"]);
      expect(csp).toContain("default-src 'self'");
      expect(csp).toContain("script-src 'self'");
      expect(csp).toContain("style-src 'self'");
      expect(csp).toContain("frame-ancestors 'none'");
      expect(csp).not.toContain("unsafe-inline");
      expect(csp).not.toContain("unsafe-eval");
    }
  });

  it("cancels a run on a JSON body or no body, never on a form post", async () => {
    const datasetId = await createDatasetId(api.app);
    const created = await api.app.inject({
      method: "POST",
      url: "/v1/runs",
      payload: runBody(datasetId),
    });
    const id = created.json().id;
    const cancel = (headers: Record<string, string>, payload?: string) =>
      api.app.inject({ method: "POST", url: `/v1/runs/${id}/cancel`, headers, payload });
    for (const [type, payload] of [
      ["application/x-www-form-urlencoded", "confirm=1"],
      [
        "multipart/form-data; boundary=x",
        "--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--",
      ],
      ["text/plain", "cancel"],
    ]) {
      const res = await cancel({ "content-type": type }, payload);
      expect(res.statusCode, type).toBe(415);
      expect(res.json().error.code).toBe("unsupported_media_type");
    }
    const stillQueued = await api.app.inject({ url: `/v1/runs/${id}` });
    expect(stillQueued.json().status).toBe("queued");
    const res = await cancel({ "content-type": "application/json" }, "{}");
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json().status).toBe("cancelled");
    expect((await cancel({})).statusCode).toBe(200);
  });
});

describe("rate limits", () => {
  /**
   * Two api replicas allowing `max` requests (default 5) a window (default a minute) per key,
   * counting under a prefix of their own.
   */
  async function limitedReplicas(
    keys: string,
    prefix: string,
    limit: { max?: number; windowMs?: number } = {},
  ): Promise<FastifyInstance[]> {
    const env = {
      DATABASE_URL: api.database.url,
      REDIS_URL: api.redis.url,
      CHATRL_API_KEYS: keys,
      CHATRL_RATE_LIMIT_MAX: String(limit.max ?? 5),
      CHATRL_RATE_LIMIT_WINDOW_MS: String(limit.windowMs ?? 60_000),
      // Counters of their own (they expire after the window): the other tests' requests count
      // against the same address under the test's prefix.
      CHATRL_QUEUE_PREFIX: `${api.redis.prefix}-${prefix}`,
      CHATRL_LOG_LEVEL: "silent",
    };
    const deps = { db: api.database.db, flow: api.flow, queues: api.queues };
    return [await buildApp(loadConfig(env), deps), await buildApp(loadConfig(env), deps)];
  }

  it("answers 429 with Retry-After past the limit, per key, counted across replicas", async () => {
    const replicas = await limitedReplicas("alice,bob", "limits");
    const get = (app: FastifyInstance, key: string) =>
      app.inject({ url: "/v1/runs", headers: { authorization: `Bearer ${key}` } });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 6; i++) statuses.push((await get(replicas[i % 2], "alice")).statusCode);
      expect(statuses).toEqual([200, 200, 200, 200, 200, 429]);
      const limited = await get(replicas[0], "alice");
      expect(limited.statusCode).toBe(429);
      expect(Number(limited.headers["retry-after"])).toBeGreaterThan(0);
      expect(limited.json().error).toMatchObject({
        type: "rate_limit_error",
        code: "rate_limit_exceeded",
        param: null,
      });
      expect(limited.json().error.message).toMatch(
        /^Rate limit reached: 5 requests per 60 s; try again in \d+ s$/,
      );
      // Another key has its own budget; a bad key is a 401, not a spent budget.
      const bob = await get(replicas[1], "bob");
      expect(bob.statusCode, bob.body).toBe(200);
      expect((await get(replicas[1], "mallory")).statusCode).toBe(401);
      // Health checks are limited too, but by address (no key): a prober is not locked out by a user.
      const health = await replicas[0].inject({ url: "/healthz" });
      expect(health.statusCode, health.body).toBe(200);
    } finally {
      for (const app of replicas) await app.close();
    }
  });

  it("counts requests that arrive together one by one: of 12 at once on two replicas, 5 pass", async () => {
    const replicas = await limitedReplicas("carol", "together");
    try {
      // Requests of one key that arrive while its count is on the way to Redis go in one INCRBY;
      // each must still get the count it would have got alone.
      const responses = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          replicas[i % 2].inject({ url: "/v1/runs", headers: { authorization: "Bearer carol" } }),
        ),
      );
      const statuses = responses.map((r) => r.statusCode);
      expect(statuses.filter((s) => s === 200)).toHaveLength(5);
      expect(statuses.filter((s) => s === 429)).toHaveLength(7);
      const remaining = responses
        .filter((r) => r.statusCode === 200)
        .map((r) => Number(r.headers["x-ratelimit-remaining"]))
        .sort();
      expect(remaining).toEqual([0, 1, 2, 3, 4]);
    } finally {
      for (const app of replicas) await app.close();
    }
  });

  /** Sends `n` requests to `app`, `together` at a time; the statuses in order. */
  async function statuses(app: FastifyInstance, n: number, together = 50): Promise<number[]> {
    const all: number[] = [];
    for (let sent = 0; sent < n; sent += together) {
      const wave = Array.from({ length: Math.min(together, n - sent) }, () =>
        app.inject({ url: "/healthz" }),
      );
      for (const response of await Promise.all(wave)) all.push(response.statusCode);
    }
    return all;
  }
  const passed = (codes: number[]) => codes.filter((c) => c === 200).length;

  it("takes a key's count from Redis a block at a time, and still lets exactly max pass across replicas", async () => {
    const max = 1000;
    const block = rateLimitBlock(max);
    expect(block).toBe(10);
    const [a, b] = await limitedReplicas("erin", "blocks", { max });
    const redis = new Redis(api.redis.url);
    try {
      // One request on a takes a whole block from the shared count (the address's count, as
      // /healthz is counted without a key).
      expect(passed(await statuses(a, 1))).toBe(1);
      const counter = `${api.redis.prefix}-blocks:ratelimit:ip:127.0.0.1`;
      expect(Number(await redis.get(counter))).toBe(block);
      // b can spend only what a does not hold; a still spends the rest of its block.
      const onB = await statuses(b, max + 100);
      expect(passed(onB)).toBe(max - block);
      expect(onB.slice(0, max - block).every((c) => c === 200)).toBe(true);
      const onA = await statuses(a, block + 20);
      expect(passed(onA)).toBe(block - 1);
      // Past the budget: 429 with Retry-After on either replica.
      const refused = await b.inject({ url: "/healthz" });
      expect(refused.statusCode).toBe(429);
      expect(Number(refused.headers["retry-after"])).toBeGreaterThan(0);
      expect(refused.json().error.code).toBe("rate_limit_exceeded");
    } finally {
      redis.disconnect();
      for (const app of [a, b]) await app.close();
    }
  });

  it("starts over when the window ends, dropping the numbers a replica still held", async () => {
    const [a, b] = await limitedReplicas("frank", "window", { max: 200, windowMs: 1000 });
    try {
      const first = [...(await statuses(a, 150)), ...(await statuses(b, 100))];
      expect(passed(first)).toBeLessThanOrEqual(200);
      expect((await a.inject({ url: "/healthz" })).statusCode).toBe(429);
      await vi.waitFor(
        async () => {
          const response = await a.inject({ url: "/healthz" });
          if (response.statusCode !== 200) throw new Error(`still ${response.statusCode}`);
        },
        { timeout: 5000, interval: 50 },
      );
      expect(passed(await statuses(b, 100))).toBeGreaterThan(0);
    } finally {
      for (const app of [a, b]) await app.close();
    }
  });
});

describe("slow clients", () => {
  let app: FastifyInstance;
  let port: number;
  let closeDb: (() => Promise<void>) | undefined;

  beforeAll(async () => {
    const config = loadConfig({
      DATABASE_URL: api.database.url,
      REDIS_URL: api.redis.url,
      CHATRL_QUEUE_PREFIX: api.redis.prefix,
      CHATRL_LOG_LEVEL: "silent",
      CHATRL_HEADERS_TIMEOUT_MS: "1000",
      CHATRL_MIN_UPLOAD_BYTES_PER_S: "4096",
    });
    const db = await openDatabase({ databaseUrl: api.database.url, dataDir: tmpdir() });
    app = await buildApp(
      { ...config, timeouts: { ...config.timeouts, bodyGraceMs: 1000 } },
      { db, flow: api.flow, queues: api.queues },
    );
    closeDb = () => db.close();
    await app.listen({ host: "127.0.0.1", port: 0 });
    port = (app.server.address() as { port: number }).port;
  });
  afterAll(async () => {
    await app?.close();
    await closeDb?.();
  });

  /** A socket writing `head` at once, then one byte of `trickle` every 300 ms. */
  function slowClient(head: string, trickle: string): { socket: Socket; closed: Promise<string> } {
    const socket = connect(port, "127.0.0.1");
    let answer = "";
    socket.on("data", (d) => (answer += d));
    socket.on("error", () => {});
    socket.write(head);
    let i = 0;
    const timer = setInterval(() => {
      if (!socket.destroyed && i < trickle.length) socket.write(trickle[i++]);
    }, 300);
    const closed = once(socket, "close").then(() => {
      clearInterval(timer);
      return answer;
    });
    return { socket, closed };
  }

  const within = <T>(ms: number, p: Promise<T>) =>
    Promise.race([
      p,
      new Promise<never>((_, r) => setTimeout(() => r(new Error(`not within ${ms} ms`)), ms)),
    ]);

  it("closes clients that trickle their headers, within the headers timeout", async () => {
    const clients = Array.from({ length: 50 }, () =>
      slowClient(
        "GET /v1/runs HTTP/1.1\r\nHost: x\r\n",
        "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      ),
    );
    const started = Date.now();
    await within(4000, Promise.all(clients.map((c) => c.closed)));
    expect(Date.now() - started).toBeLessThan(4000);
  });

  it("answers 408 to a body that trickles in, and closes the connection", async () => {
    const body = '{"prompt":"a","response":"b"}\n'.repeat(20);
    const { closed } = slowClient(
      "POST /v1/datasets?name=slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n" +
        `Content-Length: ${body.length}\r\n\r\n`,
      body,
    );
    const answer = await within(5000, closed);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    expect(answer).toMatch(/"code":"request_timeout"/);
  });

  it("still takes an upload that arrives at a sane rate over several seconds", async () => {
    const row = `{"prompt":"${"q".repeat(200)}","response":"${"a".repeat(200)}"}\n`;
    const body = row.repeat(300); // ~125 KB at ~40 KB/s
    const socket = connect(port, "127.0.0.1");
    let answer = "";
    socket.on("data", (d) => (answer += d));
    // Listening from the start: the answer and the close can come during the last pause below.
    const closed = once(socket, "close");
    socket.write(
      "POST /v1/datasets?name=steady HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n" +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`,
    );
    for (let i = 0; i < body.length; i += 4000) {
      socket.write(body.slice(i, i + 4000));
      await new Promise((r) => setTimeout(r, 100));
    }
    await closed;
    expect(answer).toMatch(/^HTTP\/1\.1 201 /);
  });

  it("keeps serving everyone else meanwhile", async () => {
    const res = await uploadDataset(api.app);
    expect(res.statusCode).toBe(201);
  });
});

import { redisConnection } from "@chatrl/queue";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildHealthApp } from "../src/health.ts";
import { startWorker } from "../src/worker.ts";
import { createHarness, FAST_TIMING, type Harness } from "./harness.ts";

const quiet = pino({ level: "silent" });
let h: Harness;

beforeAll(async () => {
  h = await createHarness();
});

afterAll(async () => {
  await h?.close();
});

describe("worker health endpoints", () => {
  it("is alive and ready while its queues run, and not alive once they stopped", async () => {
    const worker = await startWorker(
      h.config,
      { db: h.tdb.db, connection: h.connection, logger: quiet },
      FAST_TIMING,
    );
    const app = await buildHealthApp({ db: h.tdb.db, connection: h.connection, worker });
    try {
      expect((await app.inject({ url: "/healthz" })).json()).toEqual({ status: "ok" });
      const ready = await app.inject({ url: "/readyz" });
      expect(ready.statusCode).toBe(200);
      expect(ready.json()).toEqual({
        status: "ready",
        postgres: "ok",
        redis: "ok",
        backend: {
          name: worker.backend.name,
          threads: worker.backend.threads,
          native_kernels: worker.backend.native,
          blas_core: worker.backend.blas?.core ?? null,
          kernels: worker.backend.kernels,
          native_error: worker.backend.nativeError,
        },
      });

      await worker.close();
      const dead = await app.inject({ url: "/healthz" });
      expect(dead.statusCode).toBe(503);
      expect(dead.json().error).toMatchObject({
        message: "Not alive: queue workers stopped: sft, reward",
        code: "not_alive",
      });
    } finally {
      await worker.close();
      await app.close();
    }
  });

  it("is not ready when Redis does not answer, and says so", async () => {
    const nowhere = redisConnection("redis://127.0.0.1:1", {
      lazyConnect: true,
      enableOfflineQueue: false,
      retryStrategy: () => null,
    });
    nowhere.on("error", () => {});
    const app = await buildHealthApp({
      db: h.tdb.db,
      connection: nowhere,
      worker: {
        workers: [],
        backend: {
          name: "cpu",
          threads: 1,
          kernels: [],
          native: false,
          nativeError: "not built",
          blas: null,
        },
      },
    });
    try {
      const res = await app.inject({ url: "/readyz" });
      expect(res.statusCode).toBe(503);
      expect(res.json().error.message).toMatch(/^Not ready: redis: /);
      expect(res.json().error.message).not.toMatch(/postgres/);
    } finally {
      await app.close();
      nowhere.disconnect();
    }
  });
});

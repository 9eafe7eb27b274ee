// The images' build, run without Docker: deploy/build.sh (what deploy/Dockerfile runs) on a fresh
// copy of the repository, then api, worker and inference started from the built output with
// `node dist/...` against the test Postgres and Redis, a tiny SFT run trained over HTTP and a
// chat with its model. A few minutes: npm installs from the registry twice (everything to build,
// then production dependencies only), and the native kernels compile.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { cp, mkdir, mkdtemp, readdir, readFile, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import type { components } from "@chatrl/contracts";
import { STAGE_QUEUES } from "@chatrl/queue";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ENTRY_POINTS, NATIVE_ADDON } from "../scripts/build.ts";
import { createTestDatabase, type TestDatabase } from "./support/db.ts";
import { freePort, waitForHttp } from "./support/process.ts";
import { createTestRedis, type TestRedis } from "./support/redis.ts";

const execFileAsync = promisify(execFile);
const root = path.resolve(import.meta.dirname, "..");
type Schemas = components["schemas"];

/** The environment of a fresh shell: nothing from npm, vitest or tsx leaks into the build. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^(npm_|VITEST|NODE_OPTIONS$|NODE_ENV$|TSX|DATABASE_URL$|REDIS_URL$|CHATRL_)/.test(key))
      continue;
    env[key] = value;
  }
  return env;
}

/** Runs a command to its end; throws with the tail of its output when it fails. */
async function sh(cmd: string, args: string[], cwd: string): Promise<string> {
  const child = spawn(cmd, args, { cwd, env: cleanEnv(), stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (c) => (output += c));
  child.stderr.on("data", (c) => (output += c));
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  if (code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${code}:\n${output.slice(-4000)}`);
  }
  return output;
}

/** The files `git ls-files` shows (tracked, and new ones not ignored): a checkout's contents. */
async function copyCheckout(dest: string): Promise<number> {
  const { stdout } = await execFileAsync(
    "git",
    ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    { cwd: root, maxBuffer: 64 << 20 },
  );
  const files = stdout.split("\0").filter((f) => f && existsSync(path.join(root, f)));
  for (const file of files) {
    await mkdir(path.dirname(path.join(dest, file)), { recursive: true });
    await cp(path.join(root, file), path.join(dest, file));
  }
  return files.length;
}

type Service = { child: ChildProcess; output(): string; exit: Promise<number | null> };

const work = await mkdtemp(path.join(tmpdir(), "chatrl-build-"));
const src = path.join(work, "src");
const app = path.join(work, "app");
const services: Service[] = [];
let database: TestDatabase;
let redis: TestRedis;
let env: NodeJS.ProcessEnv;
let buildLog = "";

/** `node dist/<name>.js` in the runtime, as the image's CMD runs it. */
function startBuilt(name: string, extra: Record<string, string> = {}): Service {
  const child = spawn(process.execPath, [`dist/${name}.js`], {
    cwd: app,
    env: { ...env, ...extra },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout?.on("data", (c) => (output += c));
  child.stderr?.on("data", (c) => (output += c));
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const service = { child, output: () => output, exit };
  services.push(service);
  return service;
}

beforeAll(async () => {
  await copyCheckout(src);
  buildLog += await sh("bash", ["deploy/build.sh", "compile"], src);
  buildLog += await sh("bash", ["deploy/build.sh", "runtime", app], src);
  database = await createTestDatabase({ migrated: false });
  redis = await createTestRedis();
  env = {
    ...cleanEnv(),
    // As deploy/Dockerfile sets them.
    NODE_ENV: "production",
    NODE_OPTIONS: "--enable-source-maps",
    CHATRL_REQUIRE_NATIVE_KERNELS: "1",
    DATABASE_URL: database.url,
    REDIS_URL: redis.url,
    CHATRL_QUEUE_PREFIX: redis.prefix,
    CHATRL_HOST: "127.0.0.1",
    CHATRL_LOG_LEVEL: "info",
  };
}, 15 * 60_000);

afterAll(async () => {
  for (const s of services) if (s.child.exitCode === null) s.child.kill("SIGKILL");
  await redis?.cleanup();
  await database?.drop();
  await rm(work, { recursive: true, force: true });
});

describe("deploy/build.sh on a fresh copy of the repository", () => {
  it("lays out compiled JavaScript and production dependencies only, nothing to resolve elsewhere", async () => {
    for (const name of Object.keys(ENTRY_POINTS)) {
      expect(existsSync(path.join(app, "dist", `${name}.js`)), name).toBe(true);
    }
    expect(buildLog).toMatch(/runtime: \d+ imported packages resolve/);
    // No TypeScript ships: the services run from dist/.
    const shipped = await readdir(app, { recursive: true });
    const sources = shipped.filter(
      (f) => f.endsWith(".ts") && !f.split(path.sep).includes("node_modules"),
    );
    expect(sources).toEqual([]);
    for (const dev of ["typescript", "tsx", "vitest", "esbuild", "prisma", "@biomejs/biome"]) {
      expect(existsSync(path.join(app, "node_modules", dev)), `${dev} is shipped`).toBe(false);
    }
    for (const prod of ["fastify", "bullmq", "@prisma/client", "@tensorflow/tfjs-backend-wasm"]) {
      expect(existsSync(path.join(app, "node_modules", prod)), `${prod} is missing`).toBe(true);
    }
    // Node looks for packages in every parent directory: none above the runtime holds any.
    for (let dir = path.dirname(app); dir !== path.dirname(dir); dir = path.dirname(dir)) {
      expect(existsSync(path.join(dir, "node_modules")), `${dir}/node_modules`).toBe(false);
    }
  });

  it("builds portable native kernels: AVX2, no AVX-512 instruction from the build machine", async () => {
    const addon = path.join(app, NATIVE_ADDON);
    const { stdout } = await execFileAsync("objdump", ["-d", "--no-show-raw-insn", addon], {
      maxBuffer: 256 << 20,
    });
    expect(stdout).toMatch(/%ymm\d/); // vectorised for x86-64-v3
    expect(stdout).not.toMatch(/%zmm\d/); // which -march=native emits on an AVX-512 machine
  });

  it("migrates with dist/migrate.js", async () => {
    const migrate = startBuilt("migrate");
    expect(await migrate.exit, migrate.output()).toBe(0);
    expect(migrate.output()).toMatch(/Postgres \(DATABASE_URL\): applied \d+_init/);
  });

  it("refuses to start a worker without its native kernels when the image requires them", async () => {
    const addon = path.join(app, NATIVE_ADDON);
    await rename(addon, `${addon}.away`);
    try {
      const worker = startBuilt("worker");
      expect(await worker.exit).toBe(1);
      expect(worker.output()).toMatch(
        /CHATRL_REQUIRE_NATIVE_KERNELS is set but the wasm backend runs without the native OpenBLAS kernels/,
      );
      expect(worker.output()).not.toMatch(/\n\s+at /); // one line, no stack trace
    } finally {
      await rename(`${addon}.away`, addon);
    }
  });

  let apiUrl = "";
  let inferenceUrl = "";
  let worker: Service;

  it("starts api, worker and inference from dist/; the worker says it trains on the native kernels", async () => {
    const [apiPort, inferencePort, healthPort] = [
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    startBuilt("api", { CHATRL_API_PORT: String(apiPort) });
    startBuilt("inference", { CHATRL_INFERENCE_PORT: String(inferencePort) });
    worker = startBuilt("worker", { CHATRL_WORKER_HEALTH_PORT: String(healthPort) });
    apiUrl = `http://127.0.0.1:${apiPort}`;
    inferenceUrl = `http://127.0.0.1:${inferencePort}`;
    for (const url of [apiUrl, inferenceUrl, `http://127.0.0.1:${healthPort}`]) {
      const res = await waitForHttp(`${url}/readyz`, 60_000);
      expect(res.status, `${url}: ${await res.clone().text()}`).toBe(200);
    }
    const ready = (await (await fetch(`http://127.0.0.1:${healthPort}/readyz`)).json()) as {
      backend: { blas_core: string | null; kernels: string[] };
    };
    expect(ready).toMatchObject({
      status: "ready",
      postgres: "ok",
      redis: "ok",
      backend: { name: "wasm", native_kernels: true, native_error: null },
    });
    expect(ready.backend.blas_core).toBeTruthy();
    expect(ready.backend.kernels).toContain("ChatrlCausalAttention");
    expect(worker.output()).toMatch(/"msg":"tensor backend: wasm, \d+ threads?, native OpenBLAS/);
    // The api's web page is read from services/api/src/static at run time (RUNTIME_ASSETS).
    const page = await fetch(`${apiUrl}/dashboard`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toMatch(/text\/html/);

    // The image's HEALTHCHECK finds whichever service listens; fails when none answers.
    const probe = (extra: Record<string, string>) =>
      new Promise<number | null>((resolve) =>
        spawn(process.execPath, ["dist/healthcheck.js"], {
          cwd: app,
          env: { ...cleanEnv(), ...extra },
          stdio: "ignore",
        }).on("exit", resolve),
      );
    const nothing = String(await freePort());
    expect(
      await probe({
        CHATRL_API_PORT: nothing,
        CHATRL_INFERENCE_PORT: nothing,
        CHATRL_WORKER_HEALTH_PORT: String(healthPort),
      }),
    ).toBe(0);
    expect(await probe({ CHATRL_API_PORT: nothing, CHATRL_INFERENCE_PORT: nothing })).toBe(1);
  });

  it("trains a tiny SFT run over HTTP, counted in the lists KEDA reads, and chats with it", async () => {
    const jsonl = await readFile(path.join(root, "examples/sft-basics.jsonl"), "utf8");
    const upload = await fetch(`${apiUrl}/v1/datasets?name=sft-basics`, {
      method: "POST",
      headers: { "content-type": "application/x-ndjson" },
      body: jsonl,
    });
    expect(upload.status, await upload.clone().text()).toBe(201);
    const dataset = (await upload.json()) as Schemas["Dataset"];
    const created = await fetch(`${apiUrl}/v1/runs`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        name: "built",
        model: { preset: "tiny" },
        datasets: [{ id: dataset.id, weight: 1 }],
        data_split: [10, 0, 0],
        stages: {
          sft: { max_steps: 60, batch_size: 8, learning_rate: 0.003, max_seq_len: 64, epochs: 20 },
        },
        compute: { device: "cpu", price_per_hour: 1 },
        seed: 3,
      }),
    });
    expect(created.status, await created.clone().text()).toBe(201);
    let run = (await created.json()) as Schemas["Run"];

    // deploy/k8s scales workers on `<prefix>:<queue>:active` (and :wait): while the stage
    // trains, its job is the one entry of that list.
    const activeList = `${redis.prefix}:${STAGE_QUEUES.sft}:active`;
    const keys = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    const activeWhileRunning: number[] = [];
    try {
      for (let i = 0; i < 1200 && !["succeeded", "failed", "cancelled"].includes(run.status); i++) {
        const read = async () =>
          (await (await fetch(`${apiUrl}/v1/runs/${run.id}`)).json()) as Schemas["Run"];
        run = await read();
        if (run.stages[0]?.status === "running") {
          const [type, length] = await Promise.all([keys.type(activeList), keys.llen(activeList)]);
          // The stage may have finished between the two reads (its job then leaves the list):
          // only a stage still running after the look at Redis counts.
          run = await read();
          if (run.stages[0]?.status === "running") {
            expect(type).toBe("list");
            activeWhileRunning.push(length);
          }
        }
        await sleep(100);
      }
    } finally {
      keys.disconnect();
    }
    expect(run.status, `${JSON.stringify(run)}\n${worker.output().slice(-3000)}`).toBe("succeeded");
    expect(activeWhileRunning.length).toBeGreaterThan(0);
    expect(Math.max(...activeWhileRunning)).toBe(1);
    expect(run.stages[0]).toMatchObject({ kind: "sft", status: "succeeded", progress: 1 });

    const model = `run-${run.id}-sft`;
    expect(run.fine_tuned_model).toBe(model);
    const chat = await fetch(`${inferenceUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        messages: [{ role: "user", content: "What is 2 plus 3?" }],
        max_tokens: 16,
        temperature: 0,
      }),
    });
    expect(chat.status, await chat.clone().text()).toBe(200);
    const completion = (await chat.json()) as Schemas["ChatCompletion"];
    expect(completion.choices[0].message.content.length).toBeGreaterThan(0);
    expect(completion.usage.completion_tokens).toBeGreaterThan(0);
  });

  it("stops every service cleanly on SIGTERM", async () => {
    const running = services.filter((s) => s.child.exitCode === null);
    expect(running).toHaveLength(3);
    for (const s of running) s.child.kill("SIGTERM");
    const codes = await Promise.all(running.map((s) => s.exit));
    expect(codes, running.map((s) => s.output().slice(-500)).join("\n")).toEqual([0, 0, 0]);
  });
});

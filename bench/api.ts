// `npm run bench:api`: requests per second of the api alone (its own process, as main.ts starts
// it, on Postgres and Redis), with autocannon, beside the two ceilings it is held to in the same
// run: a bare Fastify route (its own process) and raw BullMQ 3-job flow adds (the flow POST
// /v1/runs queues). Prints one JSON object.
//
//   npm run bench:api -- [--seconds 10] [--connections 50]
//
// DATABASE_URL names the Postgres server (default 127.0.0.1:5432, user postgres) where a
// throwaway database is created and dropped; REDIS_URL the Redis (a throwaway key prefix).
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { availableParallelism, loadavg } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { FlowProducer } from "bullmq";
import { Redis } from "ioredis";
import pg from "pg";
import { freePort } from "../test/support/process.ts";

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "10" },
    connections: { type: "string", default: "50" },
  },
});
const SECONDS = Number(args.seconds);
const CONNECTIONS = Number(args.connections);
const root = path.resolve(import.meta.dirname, "..");
const serverUrl = process.env.DATABASE_URL || "postgresql://postgres@127.0.0.1:5432/postgres";
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const tag = randomBytes(5).toString("hex");
const dbName = `chatrl_bench_${tag}`;
const prefix = `chatrl-bench-${tag}`;

async function admin(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

function databaseUrl(name: string): string {
  const u = new URL(serverUrl);
  u.pathname = `/${name}`;
  return u.toString();
}

/** A TypeScript entry point in its own process; resolves once `url` answers. */
async function serve(script: string, env: Record<string, string>, url: string) {
  const child = spawn(process.execPath, ["--import", "tsx", script], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await fetch(url);
      return child;
    } catch (error) {
      if (Date.now() > deadline || child.exitCode !== null) throw error;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

async function stop(child: ChildProcess) {
  if (child.exitCode !== null) return;
  child.kill("SIGTERM");
  await once(child, "exit");
}

type Load = { rps: number; p50_ms: number; p99_ms: number; non2xx: number; errors: number };

async function load(opts: autocannon.Options): Promise<Load> {
  const result = await autocannon({ connections: CONNECTIONS, duration: SECONDS, ...opts });
  return {
    rps: Math.round(result.requests.average),
    p50_ms: result.latency.p50,
    p99_ms: result.latency.p99,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
  };
}

/** 3-job flows (ppo parent of sft and reward, as a run queues) added by CONNECTIONS callers. */
async function flowAdds(): Promise<{ per_s: number }> {
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const flow = new FlowProducer({ connection, prefix: `${prefix}-raw` });
  let added = 0;
  const until = Date.now() + SECONDS * 1000;
  const started = Date.now();
  const opts = { attempts: 1, removeOnFail: false };
  await Promise.all(
    Array.from({ length: CONNECTIONS }, async (_, c) => {
      for (let i = 0; Date.now() < until; i++) {
        const id = `${c}-${i}`;
        const data = { runId: `run_${id}`, stageId: `stage_${id}`, kind: "ppo" };
        await flow.add({
          name: "ppo",
          queueName: "ppo",
          data,
          opts: { ...opts, jobId: `ppo_${id}` },
          children: ["sft", "reward"].map((kind) => ({
            name: kind,
            queueName: kind,
            data: { ...data, kind },
            opts: { ...opts, jobId: `${kind}_${id}`, failParentOnFailure: true },
          })),
        });
        added += 1;
      }
    }),
  );
  const perS = added / ((Date.now() - started) / 1000);
  await flow.close();
  await connection.quit();
  return { per_s: Math.round(perS) };
}

async function deleteKeys(pattern: string) {
  const redis = new Redis(redisUrl);
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
    if (keys.length > 0) await redis.unlink(...keys);
    cursor = next;
  } while (cursor !== "0");
  await redis.quit();
}

const PREFERENCE_ROWS = Array.from({ length: 50 }, (_, i) =>
  JSON.stringify({ prompt: `What is ${i} plus 1?`, chosen: `${i + 1}.`, rejected: "No." }),
).join("\n");

async function main() {
  await admin(`CREATE DATABASE "${dbName}"`);
  const children: ChildProcess[] = [];
  try {
    const dbUrl = databaseUrl(dbName);
    const migrate = spawn(process.execPath, ["--import", "tsx", "libs/db/src/migrate-cli.ts"], {
      cwd: root,
      env: { ...process.env, DATABASE_URL: dbUrl },
      stdio: ["ignore", "ignore", "inherit"],
    });
    await once(migrate, "exit");

    const apiPort = await freePort();
    const barePort = await freePort();
    // The ceiling: Fastify answering JSON with nothing else, in a process of its own.
    const bareCode = `
      const app = (await import("fastify")).default();
      app.get("/hello", async () => ({ hello: "world" }));
      await app.listen({ host: "127.0.0.1", port: ${barePort} });`;
    const bare = spawn(process.execPath, ["--input-type=module", "-e", bareCode], {
      cwd: root,
      stdio: ["ignore", "ignore", "ignore"],
    });
    children.push(bare);
    const api = await serve(
      "services/api/src/main.ts",
      {
        DATABASE_URL: dbUrl,
        REDIS_URL: redisUrl,
        CHATRL_QUEUE_PREFIX: prefix,
        CHATRL_API_PORT: String(apiPort),
        CHATRL_HOST: "127.0.0.1",
        CHATRL_LOG_LEVEL: "warn",
        // Limits on, but out of reach: every request still pays for counting in Redis.
        CHATRL_RATE_LIMIT_MAX: "1000000000",
      },
      `http://127.0.0.1:${apiPort}/healthz`,
    );
    children.push(api);
    const base = `http://127.0.0.1:${apiPort}`;
    for (let i = 0; i < 50; i++) {
      try {
        await fetch(`http://127.0.0.1:${barePort}/hello`);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }

    const uploaded = await fetch(`${base}/v1/datasets?name=bench`, {
      method: "POST",
      headers: { "content-type": "application/x-ndjson" },
      body: PREFERENCE_ROWS,
    });
    const dataset = (await uploaded.json()) as { id: string };
    const spec = JSON.stringify({
      name: "bench",
      model: { preset: "tiny" },
      datasets: [{ id: dataset.id }],
      stages: { sft: { max_steps: 1 }, reward: { max_steps: 1 }, ppo: { max_steps: 1 } },
    });
    const created = await fetch(`${base}/v1/runs`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: spec,
    });
    if (created.status !== 201) throw new Error(`POST /v1/runs: ${await created.text()}`);
    const run = (await created.json()) as { id: string };

    // Warm both servers up (JIT, pools) before measuring.
    await autocannon({ url: `${base}/v1/runs/${run.id}`, connections: 10, duration: 2 });
    await autocannon({ url: `http://127.0.0.1:${barePort}/hello`, connections: 10, duration: 2 });

    const bareFastify = await load({ url: `http://127.0.0.1:${barePort}/hello` });
    const healthz = await load({ url: `${base}/healthz` });
    const getRun = await load({ url: `${base}/v1/runs/${run.id}` });
    const listRuns = await load({ url: `${base}/v1/runs?limit=20` });
    const getDataset = await load({ url: `${base}/v1/datasets/${dataset.id}` });
    const postRuns = await load({
      url: `${base}/v1/runs`,
      method: "POST",
      headers: { "content-type": "application/json" },
      body: spec,
    });
    const flows = await flowAdds();

    const report = {
      bench: "api",
      machine: { cores: availableParallelism(), load_average: loadavg().map((l) => +l.toFixed(2)) },
      seconds: SECONDS,
      connections: CONNECTIONS,
      bare_fastify: bareFastify,
      healthz,
      get_run: getRun,
      list_runs: listRuns,
      get_dataset: getDataset,
      post_runs: postRuns,
      bullmq_flow_adds: flows,
      get_run_vs_bare: +(getRun.rps / bareFastify.rps).toFixed(3),
      post_runs_vs_flow_adds: +(postRuns.rps / flows.per_s).toFixed(3),
      goals: {
        "get_run >= 1/4 bare fastify": getRun.rps >= bareFastify.rps / 4,
        "post_runs >= 1/2 bullmq flow adds": postRuns.rps >= flows.per_s / 2,
      },
    };
    console.log(JSON.stringify(report, null, 2));
  } finally {
    for (const child of children) await stop(child);
    await deleteKeys(`${prefix}*`);
    await admin(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`);
  }
}

await main();

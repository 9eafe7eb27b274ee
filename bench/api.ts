// `npm run bench:api`: requests per second of the api alone (its own process, as main.ts starts
// it, on Postgres and Redis), with autocannon, beside the two ceilings it is held to in the same
// run: a bare Fastify route (its own process) and raw BullMQ 3-job flow adds (the flow POST
// /v1/runs queues). Prints one JSON object.
//
//   npm run bench:api -- [--seconds 10] [--connections 50] [--rounds 3] [--cpu-prof DIR]
//
// The two goals of issue 9 compare the api with its ceilings: GET /v1/runs/{id} with the bare
// route, POST /v1/runs with raw flow adds. Each pair is measured in --rounds alternating slices
// of seconds/rounds (bare, get, bare, get, ...), so a machine whose load drifts during the run
// (other jobs on it) weighs on both sides of a ratio alike; the rates are over all slices.
//
// --cpu-prof DIR runs the api under `node --cpu-prof` and leaves its .cpuprofile in DIR (for
// Chrome DevTools or `node bench/profile-summary.ts DIR/*.cpuprofile`).
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
import { FlowProducer, Queue } from "bullmq";
import { Redis } from "ioredis";
import pg from "pg";
import { freePort } from "../test/support/process.ts";

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "10" },
    connections: { type: "string", default: "50" },
    rounds: { type: "string", default: "3" },
    "cpu-prof": { type: "string" },
  },
});
const SECONDS = Number(args.seconds);
const CONNECTIONS = Number(args.connections);
const ROUNDS = Number(args.rounds);
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
async function serve(
  script: string,
  env: Record<string, string>,
  url: string,
  nodeArgs: string[] = [],
) {
  const child = spawn(process.execPath, [...nodeArgs, "--import", "tsx", script], {
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

async function load(opts: autocannon.Options, seconds = SECONDS): Promise<Load> {
  const { load } = await loadWith(opts, seconds);
  return load;
}

async function loadWith(
  opts: autocannon.Options,
  seconds: number,
  after: (created: number) => Promise<number> = async () => 0,
): Promise<{ load: Load; afterSeconds: number }> {
  const result = await autocannon({ connections: CONNECTIONS, duration: seconds, ...opts });
  const afterSeconds = await after(result["2xx"]);
  return {
    load: {
      // Requests over the whole run (autocannon's per-second average undercounts a partial last
      // second), and over what `after` waited for.
      rps: Math.round(result.requests.total / (result.duration + afterSeconds)),
      p50_ms: result.latency.p50,
      p99_ms: result.latency.p99,
      non2xx: result.non2xx,
      errors: result.errors + result.timeouts,
    },
    afterSeconds,
  };
}

/** 3-job flows (ppo parent of sft and reward, as a run queues) added by CONNECTIONS callers. */
async function flowAdds(seconds: number, round: number): Promise<{ per_s: number }> {
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const flow = new FlowProducer({ connection, prefix: `${prefix}-raw` });
  let added = 0;
  const until = Date.now() + seconds * 1000;
  const started = Date.now();
  const opts = { attempts: 1, removeOnFail: false };
  await Promise.all(
    Array.from({ length: CONNECTIONS }, async (_, c) => {
      for (let i = 0; Date.now() < until; i++) {
        const id = `${round}-${c}-${i}`;
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

function mean(values: number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** Equal-length slices as one measurement: mean rate, worst p99, summed failures. */
function combine(slices: Load[]): Load {
  return {
    rps: Math.round(mean(slices.map((s) => s.rps))),
    p50_ms: Math.round(mean(slices.map((s) => s.p50_ms))),
    p99_ms: Math.max(...slices.map((s) => s.p99_ms)),
    non2xx: slices.reduce((a, s) => a + s.non2xx, 0),
    errors: slices.reduce((a, s) => a + s.errors, 0),
  };
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
      args["cpu-prof"] ? ["--cpu-prof", "--cpu-prof-dir", path.resolve(args["cpu-prof"])] : [],
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

    // The goals' pairs, in alternating slices (see the top of this file).
    const slice = SECONDS / ROUNDS;
    const bareSlices: Load[] = [];
    const getRunSlices: Load[] = [];
    const postRunsSlices: Load[] = [];
    const flowSlices: { per_s: number }[] = [];
    // POST /v1/runs answers once a run is committed; its flow goes to Redis right after. A POST
    // slice ends when the last flow of its runs is in Redis (one ppo job per run), and that wait
    // counts in its rate, so that no flow is left to add during the next slice.
    const ppoQueue = new Queue("ppo", { connection: { url: redisUrl }, prefix });
    let runsCreated = 1;
    const dispatchLagsS: number[] = [];
    const flowsIn = async (created: number): Promise<number> => {
      runsCreated += created;
      const started = Date.now();
      while ((await ppoQueue.getJobCountByTypes("waiting-children")) < runsCreated) {
        if (Date.now() - started > 60_000) throw new Error("POST /v1/runs: flows missing");
        await new Promise((r) => setTimeout(r, 5));
      }
      const lag = (Date.now() - started) / 1000;
      dispatchLagsS.push(lag);
      return lag;
    };
    for (let round = 0; round < ROUNDS; round++) {
      bareSlices.push(await load({ url: `http://127.0.0.1:${barePort}/hello` }, slice));
      getRunSlices.push(await load({ url: `${base}/v1/runs/${run.id}` }, slice));
      const posted = await loadWith(
        {
          url: `${base}/v1/runs`,
          method: "POST",
          headers: { "content-type": "application/json" },
          body: spec,
        },
        slice,
        flowsIn,
      );
      postRunsSlices.push(posted.load);
      flowSlices.push(await flowAdds(slice, round));
    }
    const bareFastify = combine(bareSlices);
    const getRun = combine(getRunSlices);
    const postRuns = combine(postRunsSlices);
    const flows = { per_s: Math.round(mean(flowSlices.map((f) => f.per_s))) };
    await ppoQueue.close();

    const healthz = await load({ url: `${base}/healthz` });
    const listRuns = await load({ url: `${base}/v1/runs?limit=20` });
    const getDataset = await load({ url: `${base}/v1/datasets/${dataset.id}` });

    const getRunRatio = +(getRun.rps / bareFastify.rps).toFixed(3);
    const postRunsRatio = +(postRuns.rps / flows.per_s).toFixed(3);
    const report = {
      bench: "api",
      machine: { cores: availableParallelism(), load_average: loadavg().map((l) => +l.toFixed(2)) },
      seconds: SECONDS,
      connections: CONNECTIONS,
      rounds: ROUNDS,
      bare_fastify: bareFastify,
      healthz,
      get_run: getRun,
      list_runs: listRuns,
      get_dataset: getDataset,
      post_runs: postRuns,
      // Seconds after each POST slice until its last run's flow was in Redis (counted in its rate).
      post_runs_flow_lag_s: dispatchLagsS.map((s) => +s.toFixed(3)),
      bullmq_flow_adds: flows,
      get_run_vs_bare: getRunRatio,
      post_runs_vs_flow_adds: postRunsRatio,
      // Per round, to see how steady the ratios were.
      get_run_vs_bare_by_round: getRunSlices.map((g, i) => +(g.rps / bareSlices[i].rps).toFixed(3)),
      post_runs_vs_flow_adds_by_round: postRunsSlices.map(
        (p, i) => +(p.rps / flowSlices[i].per_s).toFixed(3),
      ),
      goals: {
        "get_run >= 1/4 bare fastify": getRunRatio >= 0.25,
        "post_runs >= 1/2 bullmq flow adds": postRunsRatio >= 0.5,
      },
    };
    console.log(JSON.stringify(report, null, 2));
    // The two ratios and whether each goal is met, in words, after the JSON (on stderr, so
    // stdout stays one JSON object).
    for (const [name, ratio, goal] of [
      ["GET /v1/runs/{id} / bare Fastify", getRunRatio, 0.25],
      ["POST /v1/runs / raw BullMQ flow adds", postRunsRatio, 0.5],
    ] as const) {
      console.error(`${name}: ${ratio} (goal >= ${goal}: ${ratio >= goal ? "met" : "NOT met"})`);
    }
  } finally {
    for (const child of children) await stop(child);
    await deleteKeys(`${prefix}*`);
    await admin(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`);
  }
}

await main();

// The images' HEALTHCHECK (`node dist/healthcheck.js`): exits 0 when the chatrl service in this
// container answers GET /healthz with 200. One image runs api, worker or inference, and only
// the running one listens, so it asks each service's port (from the same variables the services
// read) and the first answer wins; CHATRL_HEALTHCHECK_URL names a single URL instead.
import process from "node:process";

const env = process.env;
const urls = env.CHATRL_HEALTHCHECK_URL
  ? [env.CHATRL_HEALTHCHECK_URL]
  : [
      env.CHATRL_API_PORT || "8080",
      env.CHATRL_INFERENCE_PORT || "8000",
      env.CHATRL_WORKER_HEALTH_PORT,
    ]
      .filter((port): port is string => Boolean(port))
      .map((port) => `http://127.0.0.1:${port}/healthz`);

async function healthy(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(4_000) });
    return res.ok;
  } catch {
    return false;
  }
}

const answers = await Promise.all(urls.map(healthy));
if (!answers.includes(true)) {
  console.error(`unhealthy: no 200 from ${urls.join(", ")}`);
  process.exit(1);
}

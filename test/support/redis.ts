// A unique BullMQ key prefix per call on the Redis globalSetup chose; cleanup() deletes its keys.
import { randomBytes } from "node:crypto";
import { connect, createServer, type Server, type Socket } from "node:net";
import { Redis } from "ioredis";
import { inject } from "vitest";

export type TestRedis = { url: string; prefix: string; cleanup(): Promise<void> };

export async function createTestRedis(): Promise<TestRedis> {
  const url = inject("redisUrl");
  const prefix = `chatrl-test-${randomBytes(6).toString("hex")}`;
  // Fail here, with the URL in the message, rather than deep inside a test.
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await probe.connect();
    await probe.ping();
  } catch (err) {
    throw new Error(`Redis at ${url} does not answer: ${(err as Error).message}`);
  } finally {
    probe.disconnect();
  }
  return { url, prefix, cleanup: () => deleteKeys(url, `${prefix}:*`) };
}

async function deleteKeys(url: string, pattern: string): Promise<void> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1 });
  try {
    // SCAN, not KEYS: it does not block a Redis that other test files share.
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 500);
      if (keys.length > 0) await redis.unlink(...keys);
      cursor = next;
    } while (cursor !== "0");
  } finally {
    await redis.quit();
  }
}

/**
 * A TCP proxy on 127.0.0.1 (on `port`, or any free one) to the Redis at `target`; `cut()` drops
 * every connection and refuses new ones, as a network outage would.
 */
export async function redisProxy(
  target: string,
  port = 0,
): Promise<{ url: string; port: number; cut(): Promise<void> }> {
  const upstreamUrl = new URL(target);
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(Number(upstreamUrl.port || 6379), upstreamUrl.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  const bound = (server.address() as { port: number }).port;
  return {
    url: `redis://127.0.0.1:${bound}`,
    port: bound,
    async cut() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

// What bounds abuse of the api and inference services: security headers, per-key rate limits
// shared by replicas through Redis, and connection timeouts that close slow or idle clients
// (slowloris) while uploads at a sane rate still take their time.
import { Transform, type TransformCallback } from "node:stream";
import helmet from "@fastify/helmet";
import rateLimit, { type FastifyRateLimitStore } from "@fastify/rate-limit";
import Fastify, {
  type FastifyInstance,
  type FastifyRequest,
  type FastifyServerOptions,
} from "fastify";
import fp from "fastify-plugin";
import { Redis } from "ioredis";
import type { ServerTimeouts } from "./config.ts";
import { ApiError } from "./fastify-errors.ts";

/**
 * Security headers on every response (@fastify/helmet): no sniffing, no framing, no referrer
 * leaks, and a Content-Security-Policy that lets a page load scripts, styles, images and data
 * only from this service: no inline scripts or styles, no eval, no plugins, and no form posting
 * anywhere (the dashboard page only loads its own .js and .css files and calls this api).
 */
export const securityHeadersPlugin = fp(
  async (app: FastifyInstance) => {
    // @fastify/helmet builds helmet's middleware anew for every request (a tenth of the api's
    // time at 2,000 req/s); with no per-request nonces the headers never change, so they are
    // learnt once from a throwaway instance and set as they are.
    const headers = await helmetHeaders();
    app.addHook("onRequest", (_request, reply, done) => {
      reply.headers(headers);
      done();
    });
  },
  { name: "chatrl-security-headers", fastify: "5.x" },
);

const HELMET_OPTIONS = {
  contentSecurityPolicy: {
    useDefaults: false,
    directives: {
      defaultSrc: ["'self'"],
      scriptSrc: ["'self'"],
      styleSrc: ["'self'"],
      // Charts draw on canvas; image exports are data: URLs.
      imgSrc: ["'self'", "data:"],
      connectSrc: ["'self'"],
      fontSrc: ["'self'"],
      objectSrc: ["'none'"],
      baseUri: ["'self'"],
      formAction: ["'none'"],
      frameAncestors: ["'none'"],
    },
  },
  // The api is called from other origins by tools, not embedded: keep the defaults that
  // would block a cross-origin fetch of a checkpoint off.
  crossOriginResourcePolicy: false,
  crossOriginEmbedderPolicy: false,
} as const;

/** The headers @fastify/helmet with HELMET_OPTIONS sets on a response. */
async function helmetHeaders(): Promise<Record<string, string>> {
  const probe = Fastify();
  try {
    await probe.register(helmet, HELMET_OPTIONS);
    probe.get("/", async () => ({}));
    const bare = Fastify();
    bare.get("/", async () => ({}));
    const [withHelmet, without] = await Promise.all([
      probe.inject({ method: "GET", url: "/" }),
      bare.inject({ method: "GET", url: "/" }),
    ]);
    await bare.close();
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(withHelmet.headers)) {
      if (name in without.headers || typeof value !== "string") continue;
      headers[name] = value;
    }
    return headers;
  } finally {
    await probe.close();
  }
}

export type RateLimitOptions = {
  /** Requests per window per key (0: no limit). */
  max: number;
  windowMs: number;
  /** Shared by the replicas; without it each replica counts on its own. */
  redisUrl?: string;
  /** Key prefix in Redis (the queue prefix, so tests and deployments do not share counters). */
  prefix: string;
};

/** Counts `n` requests at once; a key that is new (or expired) starts its window. */
const INCREMENT_BY = `
  local current = redis.call('INCRBY', KEYS[1], ARGV[2])
  local ttl = tonumber(ARGV[1])
  if current == tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ttl)
  else
    ttl = redis.call('PTTL', KEYS[1])
  end
  return {current, ttl}`;

type Counted = { current: number; ttl: number };
type CountCallback = (error: Error | null, result?: Counted) => void;
type RedisWithIncrement = Redis & {
  chatrlRateIncrement(key: string, windowMs: number, n: number): Promise<[number, number]>;
};

/** The share of a key's budget a replica takes from Redis at a time, and the most it takes. */
const BLOCK_SHARE = 0.01;
const MAX_BLOCK = 100;
/** Keys past which those whose window has ended are forgotten. */
const SWEEP_AT = 10_000;

/** How many numbers of a key's count a replica takes at a time, for a budget of `max`. */
export function rateLimitBlock(max: number): number {
  return Math.max(1, Math.min(MAX_BLOCK, Math.floor(max * BLOCK_SHARE)));
}

/**
 * A store for @fastify/rate-limit that counts in Redis, one count per key shared by every
 * replica, without a round trip per request. A replica takes a block of numbers from a key's
 * count at once (one INCRBY, which starts the window when the key is new) and hands them to its
 * requests one by one, in order; it goes back to Redis when the block is used up or its window has
 * ended, taking one number more for each request that arrived meanwhile if those are more than a
 * block. Every number comes from the one shared count, so no more than `max` requests pass in a
 * window, whatever the replicas. The price: numbers a replica holds and has not handed out count
 * as spent, so with R replicas a key may be refused up to R x (block - 1) requests before its
 * budget is really used (a block is 1% of the budget, at most 100; with a budget below 200 it is
 * one number, and counts are exact). Once a key's count is past max, its requests are refused
 * here until its window ends, without asking Redis.
 */
function reservingRedisStore(redis: Redis, prefix: string) {
  const client = redis as RedisWithIncrement;
  if (!client.chatrlRateIncrement) {
    client.defineCommand("chatrlRateIncrement", { numberOfKeys: 1, lua: INCREMENT_BY });
  }
  type Key = {
    /** The next number to hand out, and the last one taken: none left when next > last. */
    next: number;
    last: number;
    /** When the window of those numbers ends (ms since the epoch, a little early). */
    windowEnds: number;
    asking: boolean;
    waiting: CountCallback[];
  };
  const keys = new Map<string, Key>();
  const sweep = (now: number) => {
    for (const [name, key] of keys) {
      if (!key.asking && key.waiting.length === 0 && now >= key.windowEnds) keys.delete(name);
    }
  };

  /** Answers waiting requests from the block while it lasts (or while the budget is known spent). */
  const serve = (key: Key, max: number, now: number) => {
    if (now >= key.windowEnds) return;
    const ttl = key.windowEnds - now;
    while (key.waiting.length > 0 && (key.next <= key.last || key.last >= max)) {
      const callback = key.waiting.shift() as CountCallback;
      // Past the budget every number would be refused: the next one says so.
      const current = key.next <= key.last ? key.next++ : key.last + 1;
      callback(null, { current, ttl });
    }
  };

  const ask = (name: string, key: Key, windowMs: number, max: number) => {
    const callbacks = key.waiting;
    key.waiting = [];
    key.asking = true;
    const n = Math.max(callbacks.length, rateLimitBlock(max));
    const sentAt = Date.now();
    client
      .chatrlRateIncrement(name, windowMs, n)
      .then(
        ([current, ttl]) => {
          key.next = current - n + 1;
          key.last = current;
          // Measured from before Redis read the TTL, so the block is dropped no later than Redis
          // starts the next window.
          key.windowEnds = sentAt + Math.max(0, ttl);
          const left = Math.max(0, key.windowEnds - Date.now());
          for (const callback of callbacks) callback(null, { current: key.next++, ttl: left });
        },
        (error: Error) => {
          key.next = 1;
          key.last = 0;
          key.windowEnds = 0;
          for (const callback of callbacks) callback(error);
        },
      )
      .finally(() => {
        key.asking = false;
        serve(key, max, Date.now());
        if (key.waiting.length > 0) ask(name, key, windowMs, max);
      });
  };

  class Store implements FastifyRateLimitStore {
    // @fastify/rate-limit constructs the store with its options; children name their route.
    constructor(
      _options?: unknown,
      private readonly key: string = prefix,
    ) {}
    incr(id: string, callback: CountCallback, windowMs: number, max: number): void {
      const name = this.key + id;
      const now = Date.now();
      let key = keys.get(name);
      if (!key) {
        if (keys.size >= SWEEP_AT) sweep(now);
        key = { next: 1, last: 0, windowEnds: 0, asking: false, waiting: [] };
        keys.set(name, key);
      }
      key.waiting.push(callback);
      if (key.asking) return;
      serve(key, max, now);
      if (key.waiting.length > 0) ask(name, key, windowMs, max);
    }
    child(routeOptions: unknown): Store {
      // As RedisStore.child: one count per route (the options carry the route's method and url).
      const { method, url } = (routeOptions as { routeInfo: { method: string; url: string } })
        .routeInfo;
      return new Store(undefined, `${this.key}${method}${url}-`);
    }
  }
  return Store;
}

/**
 * Rate limits per API key, or per client address when the service is open (no key needed),
 * counted in Redis so every replica enforces one budget. Exceeding it is a 429 in the error shape
 * with Retry-After. Runs after authentication, so a bad key is a 401 and never spends a budget.
 * If Redis does not answer within 200 ms the request goes through: a rate limiter must not take
 * the service down with it.
 */
export const rateLimitPlugin = fp(
  async (app: FastifyInstance, opts: RateLimitOptions) => {
    if (opts.max <= 0) return;
    let redis: Redis | undefined;
    if (opts.redisUrl) {
      redis = new Redis(opts.redisUrl, {
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        commandTimeout: 200,
        connectTimeout: 2000,
        lazyConnect: true,
      });
      redis.on("error", () => {}); // requests pass while Redis is away (skipOnError)
      // Connected before the first request, which would otherwise pass uncounted (no offline
      // queue); a Redis that is down at start is retried in the background meanwhile.
      await redis.connect().catch(() => {});
      app.addHook("onClose", async () => {
        redis?.disconnect();
      });
    }
    await app.register(rateLimit, {
      global: true,
      hook: "preHandler",
      max: opts.max,
      timeWindow: opts.windowMs,
      ...(redis
        ? { store: reservingRedisStore(redis, `${opts.prefix}:ratelimit:`) }
        : { nameSpace: `${opts.prefix}:ratelimit:` }),
      skipOnError: true,
      keyGenerator: (request: FastifyRequest) =>
        request.apiKeyHash ? `key:${request.apiKeyHash}` : `ip:${request.ip}`,
      errorResponseBuilder: (_request, context) =>
        new ApiError(
          429,
          `Rate limit reached: ${context.max} requests per ${opts.windowMs / 1000} s; ` +
            `try again in ${Math.ceil(context.ttl / 1000)} s`,
          { code: "rate_limit_exceeded" },
        ),
    });
  },
  { name: "chatrl-rate-limit", fastify: "5.x", dependencies: ["chatrl-errors"] },
);

/**
 * Fastify options bounding every connection: headers within `headersMs`, a whole request within
 * `requestMs`, idle sockets and keep-alive connections closed. Node checks these every second
 * (connectionsCheckingInterval), not every 30 s as by default. Spread into `Fastify({...})`.
 */
export function serverTimeouts(t: ServerTimeouts): Partial<FastifyServerOptions> {
  return {
    connectionTimeout: t.idleMs,
    keepAliveTimeout: t.keepAliveMs,
    requestTimeout: t.requestMs,
    http: {
      headersTimeout: t.headersMs,
      requestTimeout: t.requestMs,
      connectionsCheckingInterval: 1000,
    },
  } as Partial<FastifyServerOptions>;
}

/**
 * A body that trickles in (a byte every few seconds) holds a connection and a file descriptor
 * for as long as requestMs allows. After `graceMs`, a body must have arrived at
 * `minBytesPerSecond` on average, or the request ends with 408 and the connection is closed.
 */
export const slowBodyPlugin = fp(
  async (app: FastifyInstance, opts: { minBytesPerSecond: number; graceMs: number }) => {
    if (opts.minBytesPerSecond <= 0) return;
    app.addHook("preParsing", async (request, reply, payload) => {
      const { headers } = request;
      const hasBody =
        headers["transfer-encoding"] !== undefined || Number(headers["content-length"] ?? 0) > 0;
      if (!hasBody) return payload;
      // A body already here in full (a small JSON body comes with its headers) cannot trickle:
      // no guard, no timer.
      const length = Number(headers["content-length"]);
      if (headers["transfer-encoding"] === undefined && payload.readableLength >= length) {
        return payload;
      }
      const started = Date.now();
      let received = 0;
      const guard = new Transform({
        transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback) {
          received += chunk.length;
          done(null, chunk);
        },
      });
      const timer = setInterval(() => {
        const elapsed = Date.now() - started;
        if (elapsed < opts.graceMs) return;
        if (received / (elapsed / 1000) >= opts.minBytesPerSecond) return;
        clearInterval(timer);
        reply.header("connection", "close");
        guard.destroy(
          new ApiError(
            408,
            `The request body arrived too slowly (${received} bytes in ${Math.round(elapsed / 1000)} s; ` +
              `at least ${opts.minBytesPerSecond} bytes/s is needed)`,
            { code: "request_timeout" },
          ),
        );
      }, 1000);
      timer.unref();
      const stop = () => clearInterval(timer);
      payload.on("end", stop);
      payload.on("close", stop);
      guard.on("close", stop);
      reply.raw.on("close", stop);
      payload.on("error", (error) => guard.destroy(error));
      return payload.pipe(guard);
    });
  },
  { name: "chatrl-slow-body", fastify: "5.x" },
);

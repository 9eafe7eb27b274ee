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

/**
 * A store for @fastify/rate-limit that counts in Redis as its RedisStore does (INCR, and
 * PEXPIRE when a window starts), but sends the requests of one key that arrive while a few of its
 * counts are on the way as one INCRBY: each request gets the count it would have got alone, as
 * if they had come one after another (Redis runs the INCRBYs one at a time). Fifty clients on one key cost one Redis call per round
 * trip instead of fifty; the budget is still one, shared by every replica.
 */
/** Counts of one key on the way to Redis at once; the requests arriving meanwhile wait together. */
const IN_FLIGHT_PER_KEY = 2;

function batchingRedisStore(redis: Redis, prefix: string) {
  const client = redis as RedisWithIncrement;
  if (!client.chatrlRateIncrement) {
    client.defineCommand("chatrlRateIncrement", { numberOfKeys: 1, lua: INCREMENT_BY });
  }
  // Per key: how many counts are on the way, and the requests waiting for the next one.
  const flying = new Map<string, number>();
  const waiting = new Map<string, { windowMs: number; callbacks: CountCallback[] }>();
  const send = (key: string, windowMs: number, callbacks: CountCallback[]) => {
    flying.set(key, (flying.get(key) ?? 0) + 1);
    const n = callbacks.length;
    client
      .chatrlRateIncrement(key, windowMs, n)
      .then(
        ([current, ttl]) => {
          for (const [i, callback] of callbacks.entries()) {
            callback(null, { current: current - n + 1 + i, ttl });
          }
        },
        (error: Error) => {
          for (const callback of callbacks) callback(error);
        },
      )
      .finally(() => {
        const left = (flying.get(key) ?? 1) - 1;
        if (left === 0) flying.delete(key);
        else flying.set(key, left);
        const next = waiting.get(key);
        if (next) {
          waiting.delete(key);
          send(key, next.windowMs, next.callbacks);
        }
      });
  };
  class Store implements FastifyRateLimitStore {
    // @fastify/rate-limit constructs the store with its options; children name their route.
    constructor(
      _options?: unknown,
      private readonly key: string = prefix,
    ) {}
    incr(id: string, callback: CountCallback, windowMs: number): void {
      const key = this.key + id;
      if ((flying.get(key) ?? 0) < IN_FLIGHT_PER_KEY) {
        send(key, windowMs, [callback]);
        return;
      }
      const next = waiting.get(key);
      if (next) next.callbacks.push(callback);
      else waiting.set(key, { windowMs, callbacks: [callback] });
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
      });
      redis.on("error", () => {}); // requests pass while Redis is away (skipOnError)
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
        ? { store: batchingRedisStore(redis, `${opts.prefix}:ratelimit:`) }
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

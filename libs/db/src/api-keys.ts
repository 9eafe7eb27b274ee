// API keys kept in Postgres as sha256 hashes: the key itself is shown once, when created.
import { createHash, randomBytes } from "node:crypto";
import { newId } from "./ids.ts";
import type { Db } from "./rows.ts";

export type ApiKeyRow = { id: string; name: string; createdAt: Date };

export function hashApiKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

/** A new key: returns the row and the key, which is not stored and cannot be read back. */
export async function createApiKey(p: Db, name: string): Promise<ApiKeyRow & { key: string }> {
  const key = `sk-chatrl-${randomBytes(24).toString("hex")}`;
  const row = await p.apiKey.create({
    data: { id: newId("key"), name, hash: hashApiKey(key) },
    select: { id: true, name: true, createdAt: true },
  });
  return { ...row, key };
}

export async function listApiKeys(p: Db): Promise<ApiKeyRow[]> {
  return p.apiKey.findMany({
    select: { id: true, name: true, createdAt: true },
    orderBy: { createdAt: "asc" },
  });
}

/** Deletes a key by id; false when there was none. */
export async function deleteApiKey(p: Db, id: string): Promise<boolean> {
  const { count } = await p.apiKey.deleteMany({ where: { id } });
  return count > 0;
}

export async function hasApiKeys(p: Db): Promise<boolean> {
  return (await p.apiKey.findFirst({ select: { id: true } })) !== null;
}

export async function isStoredApiKey(p: Db, key: string): Promise<boolean> {
  return (
    (await p.apiKey.findUnique({ where: { hash: hashApiKey(key) }, select: { id: true } })) !== null
  );
}

/** How long a service trusts what it learnt about stored keys (see storedApiKeys). */
export const API_KEY_CACHE_MS = 1000;

/**
 * The stored keys as the services' auth plugin asks for them, cached for `ttlMs`: a request no
 * longer costs a Postgres round trip, and a key created or deleted on any replica takes effect
 * everywhere within `ttlMs` (each replica re-reads after its entry expires). Concurrent
 * questions about the same key share one query.
 */
export function storedApiKeys(p: Db, opts: { ttlMs?: number; maxEntries?: number } = {}) {
  const ttlMs = opts.ttlMs ?? API_KEY_CACHE_MS;
  const maxEntries = opts.maxEntries ?? 10_000;
  const cache = new Map<string, { until: number; answer: Promise<boolean> }>();
  const cached = (id: string, ask: () => Promise<boolean>): Promise<boolean> => {
    const now = Date.now();
    const hit = cache.get(id);
    if (hit && hit.until > now) return hit.answer;
    // Unbounded keys (a client trying random ones) must not grow the map without limit.
    if (cache.size >= maxEntries) cache.clear();
    const answer = ask();
    cache.set(id, { until: now + ttlMs, answer });
    // A failed lookup (database down) is not remembered: the next request asks again.
    answer.catch(() => {
      if (cache.get(id)?.answer === answer) cache.delete(id);
    });
    return answer;
  };
  return {
    any: () => cached("any", () => hasApiKeys(p)),
    verify: (key: string) => {
      const hash = hashApiKey(key);
      return cached(
        `key:${hash}`,
        async () => (await p.apiKey.findUnique({ where: { hash }, select: { id: true } })) !== null,
      );
    },
  };
}

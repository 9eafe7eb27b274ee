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

/** The stored keys as the services' auth plugin asks for them. */
export function storedApiKeys(p: Db) {
  return { any: () => hasApiKeys(p), verify: (key: string) => isStoredApiKey(p, key) };
}

// Bearer-key authentication shared by the api and the inference service, as OpenAI clients send
// keys. Keys come from CHATRL_API_KEYS and from Postgres (`storedKeys`, hashes only). With no key
// in either, the service is open (a local, single-user setup); the first stored key closes it.
// Routes whose openapi.yaml operation says `security: []` (health checks) are always open.
import { createHash, timingSafeEqual } from "node:crypto";
import bearerAuth from "@fastify/bearer-auth";
import type { FastifyInstance, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import { ApiError } from "./fastify-errors.ts";

export type StoredApiKeys = {
  /** Whether any key is stored (checked per request, so a new key takes effect at once). */
  any(): Promise<boolean>;
  verify(key: string): Promise<boolean>;
};

/** What routes with their own way of sending the key (bull-board's basic auth) check it with. */
export type ApiKeyCheck = {
  /** Whether a key is needed at all (none configured and none stored: the service is open). */
  required(): Promise<boolean>;
  verify(key: string): Promise<boolean>;
};

declare module "fastify" {
  interface FastifyInstance {
    apiKeys: ApiKeyCheck;
  }
}

declare module "fastify" {
  interface FastifyRequest {
    /** sha256 (hex) of the API key the request was authenticated with; rate limits count by it. */
    apiKeyHash?: string;
  }
  interface FastifyInstance {
    /** Whether the request carries a valid key: open routes (/readyz) say more to key holders. */
    presentsValidKey(request: FastifyRequest): Promise<boolean>;
  }
}

/** The key of an `Authorization: Bearer <key>` header, if any. */
function bearerKey(request: FastifyRequest): string | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? "");
  return match?.[1];
}

const sha256 = (text: string) => createHash("sha256").update(text).digest();

export const authPlugin = fp(
  async (app: FastifyInstance, opts: { apiKeys: string[]; storedKeys?: StoredApiKeys }) => {
    const configured = opts.apiKeys.map(sha256);
    const stored = opts.storedKeys;
    // Comparing fixed-length hashes in constant time says nothing about a key's length or prefix.
    const isConfigured = (key: string) => {
      const digest = sha256(key);
      return configured.some((known) => timingSafeEqual(known, digest));
    };
    await app.register(bearerAuth, {
      keys: new Set<string>(),
      auth: async (key: string) => isConfigured(key) || ((await stored?.verify(key)) ?? false),
      addHook: false,
      verifyErrorLogLevel: "info",
    });
    app.decorate("apiKeys", {
      required: async () => configured.length > 0 || ((await stored?.any()) ?? false),
      verify: async (key: string) => isConfigured(key) || ((await stored?.verify(key)) ?? false),
    });
    app.decorate("presentsValidKey", async (request: FastifyRequest) => {
      const key = bearerKey(request);
      if (key === undefined) return false;
      return isConfigured(key) || ((await stored?.verify(key)) ?? false);
    });
    const verify = app.verifyBearerAuth!;
    app.addHook("onRequest", async (request, reply) => {
      if (request.routeOptions.config.public) return;
      if (configured.length === 0 && !(await stored?.any())) return;
      await new Promise<void>((resolve, reject) => {
        verify(request, reply, (error) => {
          if (!error) {
            const key = bearerKey(request);
            if (key) request.apiKeyHash = sha256(key).toString("hex");
            return resolve();
          }
          reply.header("www-authenticate", 'Bearer realm="chatrl"');
          reject(
            new ApiError(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'", {
              code: "invalid_api_key",
            }),
          );
        });
      });
    });
  },
  { name: "chatrl-auth", fastify: "5.x" },
);

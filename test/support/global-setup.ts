// Chooses the Postgres and Redis the tests use, once, and says which. For each of the two:
// the URL from DATABASE_URL / REDIS_URL when given; otherwise, where a Docker engine answers,
// a throwaway container (Testcontainers); otherwise the local default on 127.0.0.1.
import type { TestProject } from "vitest/node";

declare module "vitest" {
  export interface ProvidedContext {
    adminDatabaseUrl: string;
    redisUrl: string;
  }
}

type Choice = { url: string; source: string; stop?: () => Promise<unknown> };

export default async function setup(project: TestProject) {
  const docker = await dockerAnswers();
  const postgres = await choose(process.env.DATABASE_URL, docker, startPostgres, {
    url: "postgresql://postgres@127.0.0.1:5432/postgres",
    source: "local default",
  });
  const redis = await choose(process.env.REDIS_URL, docker, startRedis, {
    url: "redis://127.0.0.1:6379",
    source: "local default",
  });
  console.log(
    `[tests] Postgres: ${redact(postgres.url)} (${postgres.source}); ` +
      `Redis: ${redact(redis.url)} (${redis.source})`,
  );
  project.provide("adminDatabaseUrl", postgres.url);
  project.provide("redisUrl", redis.url);
  return async () => {
    await postgres.stop?.();
    await redis.stop?.();
  };
}

async function choose(
  fromEnv: string | undefined,
  docker: boolean,
  start: () => Promise<Choice>,
  fallback: Choice,
): Promise<Choice> {
  if (fromEnv) return { url: fromEnv, source: "from environment" };
  if (docker) return start();
  return fallback;
}

async function dockerAnswers(): Promise<boolean> {
  const { getContainerRuntimeClient } = await import("testcontainers");
  try {
    await getContainerRuntimeClient();
    return true;
  } catch {
    return false; // "Could not find a working container runtime strategy"
  }
}

async function startPostgres(): Promise<Choice> {
  const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
  const container = await new PostgreSqlContainer("postgres:16-alpine").start();
  return {
    url: container.getConnectionUri(),
    source: "Testcontainers",
    stop: () => container.stop(),
  };
}

async function startRedis(): Promise<Choice> {
  const { RedisContainer } = await import("@testcontainers/redis");
  const container = await new RedisContainer("redis:7-alpine").start();
  return {
    url: container.getConnectionUrl(),
    source: "Testcontainers",
    stop: () => container.stop(),
  };
}

function redact(url: string): string {
  return url.replace(/\/\/([^:@/]+):([^@/]+)@/, "//$1:***@");
}

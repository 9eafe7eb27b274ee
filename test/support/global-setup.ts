// Chooses the Postgres and Redis the tests use, once, and says which.
// DATABASE_URL / REDIS_URL when given; otherwise the local defaults. (Testcontainers would
// come between the two where a Docker engine answers; none does on this project's machines.)
import type { TestProject } from "vitest/node";

declare module "vitest" {
  export interface ProvidedContext {
    adminDatabaseUrl: string;
    redisUrl: string;
  }
}

export default function setup(project: TestProject) {
  const adminDatabaseUrl =
    process.env.DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/postgres";
  const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
  const from = (v: string | undefined) => (v ? "from environment" : "local default");
  console.log(
    `[tests] Postgres: ${redact(adminDatabaseUrl)} (${from(process.env.DATABASE_URL)}); ` +
      `Redis: ${redact(redisUrl)} (${from(process.env.REDIS_URL)})`,
  );
  project.provide("adminDatabaseUrl", adminDatabaseUrl);
  project.provide("redisUrl", redisUrl);
}

function redact(url: string): string {
  return url.replace(/\/\/([^:@/]+):([^@/]+)@/, "//$1:***@");
}

// `prisma generate` offline. The Prisma CLI insists on locating its native schema engine even
// though generation does not use it, and would try to download it; pointing
// PRISMA_SCHEMA_ENGINE_BINARY at any existing file stops that. Migrations never go through the
// CLI (docs/decisions/0001-offline-migrations.md).
import { execFileSync } from "node:child_process";

execFileSync("npx", ["prisma", "generate"], {
  stdio: "inherit",
  env: {
    ...process.env,
    PRISMA_SCHEMA_ENGINE_BINARY: process.env.PRISMA_SCHEMA_ENGINE_BINARY ?? process.execPath,
    PRISMA_HIDE_UPDATE_MESSAGE: "1",
  },
});

import { defineConfig } from "prisma/config";

// Only `prisma generate` is run through the CLI; migrations are applied by libs/db (see
// docs/decisions/0001-offline-migrations.md), so no datasource URL is needed here.
export default defineConfig({
  schema: "prisma/schema.prisma",
  migrations: { path: "prisma/migrations" },
});

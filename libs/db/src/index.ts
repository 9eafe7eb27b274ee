export type { Database, DatabaseConfig } from "./database.ts";
export { ensureDatabaseExists, openDatabase } from "./database.ts";
export { migrate } from "./migrate.ts";
export { newId } from "./ids.ts";
export type { IdPrefix } from "./ids.ts";
export * from "./generated/prisma/client.ts";

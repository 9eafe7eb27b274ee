export * from "./config.ts";
export * from "./fastify-errors.ts";
export type { components, operations, paths } from "./generated/openapi.ts";
export * from "./openapi.ts";
export * from "./rows.ts";
export * from "./run-spec.ts";
export * from "./text.ts";
export * from "./fastify-auth.ts";
export * from "./readiness.ts";

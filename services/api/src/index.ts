export { type ApiDeps, buildApp } from "./app.ts";
export { startApiServer } from "./server.ts";

export * from "./client.ts";
export { ChatrlApiError, ChatrlConnectionError, describeError } from "./errors.ts";
export { runCli, type CliIo } from "./cli/program.ts";
export * as polite from "./tasks/polite.ts";

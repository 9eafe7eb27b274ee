export * from "./client.ts";
export { ChatrlApiError, ChatrlConnectionError, describeError } from "./errors.ts";
export { runCli, type CliIo } from "./cli/program.ts";
export * as polite from "./tasks/polite.ts";
export {
  EVAL_TASKS,
  type EvalReport,
  type EvalTask,
  evaluateRun,
  type ModelEval,
} from "./eval.ts";

#!/usr/bin/env tsx
// The `chatrl` command: `npx tsx libs/client/src/cli.ts --help` or `npm run chatrl -- --help`.
import { runCli } from "./cli/program.ts";

process.exitCode = await runCli(process.argv.slice(2), {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
});

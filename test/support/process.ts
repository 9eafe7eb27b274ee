// Entry points run as real processes (as a user or an orchestrator starts them), for tests.
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { createServer } from "node:net";
import path from "node:path";
import type { Readable } from "node:stream";

const root = path.resolve(import.meta.dirname, "../..");

/** A localhost port nothing listens on right now (taken from the OS, then released). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export type EntryPoint = {
  child: ChildProcessByStdio<null, Readable, Readable>;
  /** Everything written to stdout and stderr so far. */
  output(): string;
  stderr(): string;
  /** The exit code (null when a signal ended it). */
  exit: Promise<number | null>;
};

/** Runs a TypeScript entry point (a path from the repository root) with extra environment. */
export function startEntryPoint(script: string, env: Record<string, string>): EntryPoint {
  // Node runs tsx's loader itself (not the tsx CLI), so signals reach the service's process.
  const child = spawn(process.execPath, ["--import", "tsx", script], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  let stderr = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => {
    output += chunk;
    stderr += chunk;
  });
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, output: () => output, stderr: () => stderr, exit };
}

/** The first answer from `url`, retrying refused connections until `timeoutMs` has passed. */
export async function waitForHttp(url: string, timeoutMs = 30_000): Promise<Response> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fetch(url);
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

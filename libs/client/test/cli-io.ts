// Runs the chatrl CLI in-process with captured output, as a user would see it.
import { Readable, Writable } from "node:stream";
import { runCli } from "../src/index.ts";

function capture(onText?: (text: string) => void) {
  let text = "";
  const stream = new Writable({
    write(chunk, _encoding, done) {
      text += chunk.toString();
      onText?.(text);
      done();
    },
  });
  return { stream, text: () => text };
}

export async function cli(
  argv: string[],
  opts: {
    env?: Record<string, string>;
    stdinLines?: string[];
    /** Called with everything printed to stdout so far, whenever it grows. */
    onStdout?: (text: string) => void;
  } = {},
) {
  const stdout = capture(opts.onStdout);
  const stderr = capture();
  const stdin = Readable.from((opts.stdinLines ?? []).map((line) => `${line}\n`));
  const code = await runCli(argv, {
    stdin,
    stdout: stdout.stream,
    stderr: stderr.stream,
    env: opts.env ?? {},
  });
  return { code, stdout: stdout.text(), stderr: stderr.text() };
}

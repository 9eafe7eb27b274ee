import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { terminalSafe } from "../src/cli/chat.ts";
import { cli } from "./cli-io.ts";

const cliPath = fileURLToPath(new URL("../src/cli.ts", import.meta.url));

describe("chatrl usage", () => {
  it("runs as a command and lists its commands in --help", async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [
      "--import",
      "tsx",
      cliPath,
      "--help",
    ]);
    for (const command of ["datasets", "runs", "chat", "eval", "--api-url", "--inference-url"]) {
      expect(stdout).toContain(command);
    }
  });

  it("names a missing argument and exits non-zero", async () => {
    const result = await cli(["runs", "get"]);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain("missing required argument 'id'");
  });

  it("refuses an option value that is not a number", async () => {
    const result = await cli(["chat", "--model", "m", "--max-tokens", "lots", "--message", "x"]);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain("not a whole number: lots");
  });

  it("says which file it could not read", async () => {
    const result = await cli(["datasets", "upload", "/nonexistent/rows.jsonl", "--name", "x"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toBe("error: cannot read /nonexistent/rows.jsonl: ENOENT\n");
  });

  it("keeps a model's escape sequences and control characters away from the terminal", () => {
    expect(terminalSafe("a\u001b[2Jb\u0008\u009b\n\tcafé")).toBe("a\uFFFD[2Jb\uFFFD\uFFFD\n\tcafé");
  });
});

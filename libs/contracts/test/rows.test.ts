import { describe, expect, it } from "vitest";
import { JsonlError, parseJsonl } from "../src/rows.ts";

function errorOf(text: string): JsonlError {
  try {
    parseJsonl(text);
  } catch (error) {
    if (error instanceof JsonlError) return error;
    throw error;
  }
  throw new Error("expected parseJsonl to throw");
}

describe("parseJsonl", () => {
  it("reads supervised rows and skips blank lines", () => {
    const text = '{"prompt":"a","response":"b"}\n\n{"prompt":"c","response":"d"}\r\n';
    expect(parseJsonl(text)).toEqual({
      format: "supervised",
      rows: [
        { prompt: "a", response: "b" },
        { prompt: "c", response: "d" },
      ],
    });
  });

  it("reads preference rows, dropping extra keys such as a Dahoas row's response", () => {
    const text = '{"prompt":"p","response":"r","chosen":"good","rejected":"bad","id":7}';
    expect(parseJsonl(text)).toEqual({
      format: "preference",
      rows: [{ prompt: "p", chosen: "good", rejected: "bad" }],
    });
  });

  it("reads chat rows", () => {
    const row = {
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hi" },
        { role: "assistant", content: "Hello." },
      ],
    };
    expect(parseJsonl(JSON.stringify(row))).toEqual({ format: "chat", rows: [row] });
  });

  it("names the line of broken JSON", () => {
    const error = errorOf('{"prompt":"a","response":"b"}\n{"prompt": "a", \n');
    expect(error.line).toBe(2);
    expect(error.message).toMatch(/^line 2: not valid JSON/);
  });

  it("counts blank lines when naming a line", () => {
    const error = errorOf('{"prompt":"a","response":"b"}\n\n\n{"prompt":"a"}');
    expect(error.line).toBe(4);
    expect(error.message).toContain("unknown row shape");
  });

  it("refuses empty strings, naming the field", () => {
    const error = errorOf('{"prompt":"a","chosen":"","rejected":"b"}');
    expect(error.line).toBe(1);
    expect(error.message).toContain("'chosen' must be a non-empty string");
  });

  it("refuses a NUL character or an unpaired surrogate, which Postgres cannot store, naming the line and field", () => {
    const nul = errorOf('{"prompt":"a","response":"b"}\n{"prompt":"a\\u0000","response":"b"}');
    expect(nul.line).toBe(2);
    expect(nul.message).toContain("'prompt' must not contain a NUL character");
    const lone = errorOf('{"messages":[{"role":"assistant","content":"x\\ud800y"}]}');
    expect(lone.message).toContain(
      "'messages[0].content' must not contain an unpaired UTF-16 surrogate",
    );
    // A surrogate pair written as escapes is a real character (an emoji) and is kept.
    expect(parseJsonl('{"prompt":"\\ud83d\\ude00","response":"b"}').rows).toEqual([
      { prompt: "\u{1F600}", response: "b" },
    ]);
  });

  it("refuses a missing field of a detected format", () => {
    expect(errorOf('{"prompt":"a","chosen":"b"}').message).toContain("missing 'rejected'");
  });

  it("refuses a chat row that does not end with the assistant's answer", () => {
    const error = errorOf('{"messages":[{"role":"user","content":"hi"}]}');
    expect(error.message).toContain("must end with an assistant message");
  });

  it("refuses a bad chat role, naming the message", () => {
    const error = errorOf('{"messages":[{"role":"robot","content":"hi"}]}');
    expect(error.message).toContain("'messages[0].role'");
  });

  it("refuses mixed formats in one upload", () => {
    const error = errorOf(
      '{"prompt":"a","response":"b"}\n{"prompt":"a","chosen":"b","rejected":"c"}',
    );
    expect(error.line).toBe(2);
    expect(error.message).toContain("preference format but the rows before it are supervised");
  });

  it("refuses lines that are JSON but not objects", () => {
    expect(errorOf("[1,2]").message).toBe("line 1: expected a JSON object");
  });

  it("refuses an upload with no rows", () => {
    const error = errorOf("\n  \n");
    expect(error.line).toBe(0);
    expect(error.message).toBe("the upload contains no rows");
  });
});

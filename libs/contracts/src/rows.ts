import { z } from "zod";
import { unstorableTextReason } from "./text.ts";

/** A prompt and the answer to train on (supervised fine-tuning). */
export type SupervisedRow = { prompt: string; response: string };
/** A prompt with a better and a worse answer (the DeepSpeed-Chat / Dahoas format). */
export type PreferenceRow = { prompt: string; chosen: string; rejected: string };
export type ChatRole = "system" | "user" | "assistant";
/** An OpenAI chat-format conversation; the last message is the assistant's answer. */
export type ChatRow = { messages: { role: ChatRole; content: string }[] };
export type DatasetRow = SupervisedRow | PreferenceRow | ChatRow;
export type DatasetFormat = "supervised" | "preference" | "chat";

const text = z
  .string()
  .min(1, "must be a non-empty string")
  .superRefine((value, ctx) => {
    const reason = unstorableTextReason(value);
    if (reason) ctx.addIssue({ code: "custom", message: reason });
  });

// Extra keys (ids, sources, a Dahoas row's `response` next to chosen/rejected) are dropped:
// datasets from elsewhere carry them and they do not change what the row means.
const rowSchemas = {
  supervised: z.object({ prompt: text, response: text }),
  preference: z.object({ prompt: text, chosen: text, rejected: text }),
  chat: z.object({
    messages: z
      .array(z.object({ role: z.enum(["system", "user", "assistant"]), content: text }))
      .min(1, "must hold at least one message")
      .refine((messages) => messages.at(-1)?.role === "assistant", {
        message: "must end with an assistant message (the answer to train on)",
      }),
  }),
} satisfies Record<DatasetFormat, z.ZodType>;

/** The first bad line of an upload; `line` is 1-based (0 when the upload has no rows at all). */
export class JsonlError extends Error {
  constructor(
    readonly line: number,
    message: string,
  ) {
    super(line > 0 ? `line ${line}: ${message}` : message);
    this.name = "JsonlError";
  }
}

function detectFormat(row: Record<string, unknown>): DatasetFormat | undefined {
  if ("messages" in row) return "chat";
  if ("chosen" in row || "rejected" in row) return "preference";
  if ("response" in row) return "supervised";
  return undefined;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const where = issue.path
    .map((key, i) => (typeof key === "number" ? `[${key}]` : i === 0 ? key : `.${String(key)}`))
    .join("");
  if (issue.code === "invalid_type" && issue.input === undefined) return `missing '${where}'`;
  return where ? `'${where}' ${issue.message}` : issue.message;
}

/**
 * Parses a JSONL upload: one JSON object a line, all in one format. Blank lines are skipped.
 * Throws JsonlError for the first line that is not valid JSON, has an unknown shape, holds an
 * empty string, or is in a different format from the lines before it.
 */
export function parseJsonl(text: string): { format: DatasetFormat; rows: DatasetRow[] } {
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  let format: DatasetFormat | undefined;
  const rows: DatasetRow[] = [];
  for (const [i, line] of lines.entries()) {
    const lineNumber = i + 1;
    if (line.trim() === "") continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new JsonlError(lineNumber, `not valid JSON (${(error as Error).message})`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new JsonlError(lineNumber, "expected a JSON object");
    }
    const rowFormat = detectFormat(value as Record<string, unknown>);
    if (!rowFormat) {
      throw new JsonlError(
        lineNumber,
        "unknown row shape: expected {prompt, response}, {prompt, chosen, rejected} or {messages}",
      );
    }
    if (format && rowFormat !== format) {
      throw new JsonlError(
        lineNumber,
        `row is in ${rowFormat} format but the rows before it are ${format}; one format an upload`,
      );
    }
    format = rowFormat;
    const parsed = rowSchemas[rowFormat].safeParse(value);
    if (!parsed.success) {
      throw new JsonlError(
        lineNumber,
        `${rowFormat} row: ${describeIssue(parsed.error.issues[0])}`,
      );
    }
    rows.push(parsed.data as DatasetRow);
  }
  if (!format) throw new JsonlError(0, "the upload contains no rows");
  return { format, rows };
}

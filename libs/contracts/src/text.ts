// Postgres text and jsonb cannot hold a NUL character, and jsonb refuses a lone UTF-16
// surrogate: JSON may carry both (`"\u0000"`, `"\ud800"`), so they are refused as bad input
// before they reach the database (where they would be a 500).
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is what this looks for.
const UNSTORABLE = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Why `text` cannot be stored as Postgres text, or null when it can. */
export function unstorableTextReason(text: string): string | null {
  const match = UNSTORABLE.exec(text);
  if (!match) return null;
  return match[0] === "\u0000"
    ? "must not contain a NUL character (\\u0000)"
    : "must not contain an unpaired UTF-16 surrogate (invalid Unicode)";
}

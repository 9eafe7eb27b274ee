// The dataset row formats, as documented for @chatrl/contracts (src/rows.ts). Kept here until
// that package exports them from its index; then this file re-exports them.
export type SupervisedRow = { prompt: string; response: string };
export type PreferenceRow = { prompt: string; chosen: string; rejected: string };
export type ChatRole = "system" | "user" | "assistant";
export type ChatRow = { messages: { role: ChatRole; content: string }[] };
export type DatasetRow = SupervisedRow | PreferenceRow | ChatRow;

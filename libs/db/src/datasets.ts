import type { Dataset, DatasetFormat } from "./generated/prisma/client.ts";
import { Prisma } from "./generated/prisma/client.ts";
import { newId } from "./ids.ts";
import { checkLimit, type Db, type Page, type PageQuery, toPage } from "./rows.ts";

/** Rows per INSERT: keeps each statement well under Postgres' 65535 bind parameters. */
const ROW_BATCH = 1000;

/** Stores a dataset and all its rows in one transaction: a failure leaves nothing behind. */
export async function createDataset(
  p: Db,
  input: { name: string; format: DatasetFormat; rows: unknown[] },
): Promise<Dataset> {
  const id = newId("ds");
  return p.$transaction(
    async (tx) => {
      const dataset = await tx.dataset.create({
        data: { id, name: input.name, format: input.format, rowCount: input.rows.length },
      });
      for (let start = 0; start < input.rows.length; start += ROW_BATCH) {
        const batch = input.rows.slice(start, start + ROW_BATCH);
        await tx.datasetRow.createMany({
          data: batch.map((row, i) => ({
            datasetId: id,
            index: start + i,
            data: row === null ? Prisma.JsonNull : (row as Prisma.InputJsonValue),
          })),
        });
      }
      return dataset;
    },
    // Large uploads take longer than Prisma's 5 s default for interactive transactions.
    { maxWait: 10_000, timeout: 300_000 },
  );
}

export function getDataset(p: Db, id: string): Promise<Dataset | null> {
  return p.dataset.findUnique({ where: { id } });
}

/** Newest first; `after` is the id of the last dataset of the previous page. */
export async function listDatasets(p: Db, { after, limit }: PageQuery): Promise<Page<Dataset>> {
  checkLimit(limit);
  const rows = await p.dataset.findMany({
    orderBy: [{ createdAt: "desc" }, { id: "desc" }],
    take: limit + 1,
    ...(after ? { cursor: { id: after }, skip: 1 } : {}),
  });
  return toPage(rows, limit);
}

/** The rows as uploaded, in line order. */
export async function loadDatasetRows(p: Db, id: string): Promise<unknown[]> {
  const rows = await p.datasetRow.findMany({
    where: { datasetId: id },
    orderBy: { index: "asc" },
    select: { data: true },
  });
  return rows.map((r) => r.data);
}

/**
 * The longest examples of a dataset, in tokens of the engine's byte tokenizer (UTF-8 bytes of
 * the chat-template text, plus 1 for the eos after an answer). 0 where the format has none.
 */
export type DatasetLengths = {
  /** The longest prompt as the model reads it before answering (PPO's max_prompt_seq_len). */
  prompt: number;
  /** The longest sft example: prompt, answer (a preference row's chosen one) and eos. */
  sft: number;
  /** The longer side of the longest preference pair: prompt, answer and eos (reward model). */
  pair: number;
};

/**
 * Per dataset id, the lengths of its longest examples, computed in Postgres (no row leaves the
 * database). The template the sizes follow is libs/engine's renderChatPrompt:
 * "<|role|>\n{content}\n" per message, then "<|assistant|>\n". A supervised or preference row
 * is one user message, so its prompt is 24 bytes of template around the text; a chat row's
 * longest example is its whole conversation (its last assistant turn after all before it), and
 * its prompt is everything before that last answer. Unknown ids are absent from the map.
 *
 * In the SQL: a chat message renders as role and content plus 6 bytes of template, and the sum
 * over a conversation is its longest example (the last answer's missing newline is the eos'
 * place); a one-message prompt is its text plus 24 bytes (user and assistant markers, newline).
 */
export async function datasetLengths(p: Db, ids: string[]): Promise<Map<string, DatasetLengths>> {
  if (ids.length === 0) return new Map();
  const rows = await p.$queryRaw<({ datasetId: string } & DatasetLengths)[]>`
    WITH sized AS (
      SELECT
        r.dataset_id,
        r.data -> 'messages' IS NOT NULL AS is_chat,
        (SELECT SUM(octet_length(m ->> 'role') + octet_length(m ->> 'content') + 6)
           FROM jsonb_array_elements(CASE WHEN jsonb_typeof(r.data -> 'messages') = 'array'
                                          THEN r.data -> 'messages' ELSE '[]'::jsonb END) m
        )::int AS chat_full,
        octet_length(r.data -> 'messages' -> -1 ->> 'content') AS chat_last,
        octet_length(r.data ->> 'prompt') + 24 AS prompt,
        octet_length(COALESCE(r.data ->> 'chosen', r.data ->> 'response')) AS answer,
        GREATEST(octet_length(r.data ->> 'chosen'), octet_length(r.data ->> 'rejected')) AS pair_answer
      FROM dataset_row r
      WHERE r.dataset_id = ANY(${ids})
    )
    SELECT
      dataset_id AS "datasetId",
      COALESCE(MAX(CASE WHEN is_chat THEN chat_full - chat_last - 1 ELSE prompt END), 0)::int AS prompt,
      COALESCE(MAX(CASE WHEN is_chat THEN chat_full ELSE prompt + answer + 1 END), 0)::int AS sft,
      COALESCE(MAX(prompt + pair_answer + 1), 0)::int AS pair
    FROM sized
    GROUP BY dataset_id`;
  return new Map(rows.map(({ datasetId, ...lengths }) => [datasetId, lengths]));
}

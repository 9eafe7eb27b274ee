import type { Dataset, DatasetFormat } from "./generated/prisma/client.ts";
import { Prisma } from "./generated/prisma/client.ts";
import { newId } from "./ids.ts";
import { checkLimit, type Db, type Page, type PageQuery, toPage } from "./rows.ts";
import { queryRows, type Statement } from "./sql.ts";

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
      // Rows never change after upload: their longest examples are measured once, here.
      const [lengths] = await tx.$queryRawUnsafe<DatasetLengths[]>(
        `UPDATE "dataset" d
         SET longest_prompt = m.prompt, longest_sft = m.sft, longest_pair = m.pair
         FROM (${LONGEST_EXAMPLES}) m
         WHERE d.id = $1
         RETURNING m.prompt, m.sft, m.pair`,
        id,
      );
      return {
        ...dataset,
        longestPrompt: lengths.prompt,
        longestSft: lengths.sft,
        longestPair: lengths.pair,
      };
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
 * The SQL that measures the longest examples of one dataset's rows (its id is $1), in one row
 * (0s for no rows). The template the sizes follow is libs/engine's
 * renderChatPrompt: "<|role|>\n{content}\n" per message, then "<|assistant|>\n". A supervised or
 * preference row is one user message, so its prompt is 24 bytes of template around the text; a
 * chat row's longest example is its whole conversation (its last assistant turn after all before
 * it), and its prompt is everything before that last answer.
 *
 * In the SQL: a chat message renders as role and content plus 6 bytes of template, and the sum
 * over a conversation is its longest example (the last answer's missing newline is the eos'
 * place); a one-message prompt is its text plus 24 bytes (user and assistant markers, newline).
 * The migration 20261201215308_dataset_longest_examples measured older datasets the same way.
 */
const LONGEST_EXAMPLES = `
  SELECT
    COALESCE(MAX(CASE WHEN is_chat THEN chat_full - chat_last - 1 ELSE prompt END), 0)::int AS prompt,
    COALESCE(MAX(CASE WHEN is_chat THEN chat_full ELSE prompt + answer + 1 END), 0)::int AS sft,
    COALESCE(MAX(prompt + pair_answer + 1), 0)::int AS pair
  FROM (
    SELECT
      r.data -> 'messages' IS NOT NULL AS is_chat,
      (SELECT SUM(octet_length(m ->> 'role') + octet_length(m ->> 'content') + 6)
         FROM jsonb_array_elements(CASE WHEN jsonb_typeof(r.data -> 'messages') = 'array'
                                        THEN r.data -> 'messages' ELSE '[]'::jsonb END) m
      )::int AS chat_full,
      octet_length(r.data -> 'messages' -> -1 ->> 'content') AS chat_last,
      octet_length(r.data ->> 'prompt') + 24 AS prompt,
      octet_length(COALESCE(r.data ->> 'chosen', r.data ->> 'response')) AS answer,
      GREATEST(octet_length(r.data ->> 'chosen'), octet_length(r.data ->> 'rejected')) AS pair_answer
    FROM "dataset_row" r
    WHERE r.dataset_id = $1
  ) sized`;

function lengthsOf(d: Pick<Dataset, "longestPrompt" | "longestSft" | "longestPair">) {
  return { prompt: d.longestPrompt, sft: d.longestSft, pair: d.longestPair };
}

/**
 * Per dataset id, the lengths of its longest examples (measured at upload, see
 * LONGEST_EXAMPLES). Unknown ids are absent from the map.
 */
export async function datasetLengths(p: Db, ids: string[]): Promise<Map<string, DatasetLengths>> {
  if (ids.length === 0) return new Map();
  const datasets = await getDatasets(p, ids);
  return new Map([...datasets].map(([id, d]) => [id, lengthsOf(d)]));
}

/** What POST /v1/runs needs to know of a dataset; its rows never change, so neither does this. */
export type DatasetFacts = Pick<
  Dataset,
  "id" | "format" | "rowCount" | "longestPrompt" | "longestSft" | "longestPair"
>;

const GET_DATASETS: Statement = {
  name: "chatrl_get_datasets",
  text: `SELECT id, format::text AS format, row_count AS "rowCount", longest_prompt AS "longestPrompt",
          longest_sft AS "longestSft", longest_pair AS "longestPair"
   FROM "dataset" WHERE id = ANY(ARRAY(SELECT json_array_elements_text($1::json)))`,
};

/** The datasets with these ids, by id, in one round trip; unknown ids are absent. */
export async function getDatasets(p: Db, ids: string[]): Promise<Map<string, DatasetFacts>> {
  if (ids.length === 0) return new Map();
  const rows = await queryRows<DatasetFacts>(p, GET_DATASETS, [JSON.stringify(ids)]);
  return new Map(rows.map((row) => [row.id, row]));
}

/**
 * getDatasets for one process, remembering what it found: a dataset's facts never change after
 * its upload and datasets are never deleted, so no replica can see stale facts. Unknown ids
 * are asked again every time (they may be uploaded meanwhile). Concurrent callers share one
 * query per dataset while it runs; a failed query is not remembered.
 */
export function datasetFactsCache(p: Db, opts: { maxEntries?: number } = {}) {
  const maxEntries = opts.maxEntries ?? 10_000;
  const known = new Map<string, DatasetFacts>();
  const asking = new Map<string, Promise<DatasetFacts | undefined>>();
  return async (ids: string[]): Promise<Map<string, DatasetFacts>> => {
    const missing = ids.filter((id) => !known.has(id) && !asking.has(id));
    if (missing.length > 0) {
      const query = getDatasets(p, missing);
      for (const id of missing) {
        const one = query.then((found) => found.get(id));
        asking.set(id, one);
        const done = () => asking.delete(id);
        one.then((facts) => {
          done();
          if (!facts) return;
          if (known.size >= maxEntries) known.clear();
          known.set(id, facts);
        }, done);
      }
    }
    const found = new Map<string, DatasetFacts>();
    for (const id of ids) {
      const facts = known.get(id) ?? (await asking.get(id));
      if (facts) found.set(id, facts);
    }
    return found;
  };
}

export type DatasetFactsLookup = ReturnType<typeof datasetFactsCache>;

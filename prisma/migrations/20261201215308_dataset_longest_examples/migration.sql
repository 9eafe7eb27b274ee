-- AlterTable
ALTER TABLE "dataset" ADD COLUMN     "longest_pair" INTEGER NOT NULL DEFAULT 0,
ADD COLUMN     "longest_prompt" INTEGER NOT NULL DEFAULT 0,
ADD COLUMN     "longest_sft" INTEGER NOT NULL DEFAULT 0;

-- Data: the lengths of the datasets uploaded before this migration, measured as
-- libs/db/src/datasets.ts (LONGEST_EXAMPLES) measures a new upload. Written by hand: the
-- schema engine diffs schemas, not data.
UPDATE "dataset" d
SET "longest_prompt" = m.prompt, "longest_sft" = m.sft, "longest_pair" = m.pair
FROM (
  SELECT
    dataset_id,
    COALESCE(MAX(CASE WHEN is_chat THEN chat_full - chat_last - 1 ELSE prompt END), 0)::int AS prompt,
    COALESCE(MAX(CASE WHEN is_chat THEN chat_full ELSE prompt + answer + 1 END), 0)::int AS sft,
    COALESCE(MAX(prompt + pair_answer + 1), 0)::int AS pair
  FROM (
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
    FROM "dataset_row" r
  ) sized
  GROUP BY dataset_id
) m
WHERE d.id = m.dataset_id;

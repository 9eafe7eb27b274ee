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

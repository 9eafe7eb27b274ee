import type { EventLevel, RunEvent } from "./generated/prisma/client.ts";
import { checkLimit, type Db, type Page, type PageQuery, toPage } from "./rows.ts";

export type RunEventRow = Omit<RunEvent, "id"> & { id: number };

function toEventRow(event: RunEvent): RunEventRow {
  return { ...event, id: Number(event.id) };
}

export async function addEvent(
  p: Db,
  runId: string,
  level: EventLevel,
  message: string,
): Promise<RunEventRow> {
  return toEventRow(await p.runEvent.create({ data: { runId, level, message } }));
}

/** Newest first; `after` is the id of the last event of the previous page. */
export async function listEvents(
  p: Db,
  runId: string,
  { after, limit }: PageQuery<number>,
): Promise<Page<RunEventRow>> {
  checkLimit(limit);
  const rows = await p.runEvent.findMany({
    where: { runId, ...(after !== undefined ? { id: { lt: BigInt(after) } } : {}) },
    orderBy: { id: "desc" },
    take: limit + 1,
  });
  return toPage(rows.map(toEventRow), limit);
}

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import { createDataset, getDataset, listDatasets, loadDatasetRows } from "../src/index.ts";

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => t?.drop());

describe("datasets", () => {
  it("stores every row of a large upload and gives them back in upload order", async () => {
    // More than two insert batches, with a last batch that is not full.
    const rows = Array.from({ length: 2_345 }, (_, i) => ({ prompt: `q${i}`, response: `a${i}` }));
    const dataset = await createDataset(t.db.prisma, { name: "big", format: "supervised", rows });
    expect(dataset).toMatchObject({ name: "big", format: "supervised", rowCount: 2_345 });
    expect(dataset.id).toMatch(/^ds_[0-9a-f]{24}$/);
    expect(await getDataset(t.db.prisma, dataset.id)).toEqual(dataset);
    expect(await loadDatasetRows(t.db.prisma, dataset.id)).toEqual(rows);
  });

  it("stores nothing when any row cannot be written", async () => {
    const before = await t.db.prisma.dataset.count();
    const rowsBefore = await t.db.prisma.datasetRow.count();
    // Postgres refuses a \u0000 inside jsonb text, here in the second batch of rows.
    const rows: unknown[] = Array.from({ length: 1_500 }, (_, i) => ({
      prompt: `q${i}`,
      response: "a",
    }));
    rows[1_200] = { prompt: "bad\u0000row", response: "a" };
    await expect(
      createDataset(t.db.prisma, { name: "broken", format: "supervised", rows }),
    ).rejects.toThrow();
    expect(await t.db.prisma.dataset.count()).toBe(before);
    expect(await t.db.prisma.datasetRow.count()).toBe(rowsBefore);
    expect((await t.db.prisma.dataset.findMany()).map((d) => d.name)).not.toContain("broken");
  });

  it("returns null for an unknown dataset and no rows for it", async () => {
    expect(await getDataset(t.db.prisma, "ds_000000000000000000000000")).toBeNull();
    expect(await loadDatasetRows(t.db.prisma, "ds_000000000000000000000000")).toEqual([]);
  });

  it("lists datasets newest first, a page at a time", async () => {
    const names = ["p1", "p2", "p3", "p4", "p5"];
    for (const name of names) {
      await createDataset(t.db.prisma, { name, format: "chat", rows: [] });
      await new Promise((r) => setTimeout(r, 5)); // distinct created_at
    }
    const seen: string[] = [];
    let after: string | undefined;
    let pages = 0;
    for (;;) {
      const page = await listDatasets(t.db.prisma, { after, limit: 2 });
      pages++;
      seen.push(...page.data.map((d) => d.name));
      if (!page.hasMore) break;
      after = page.data[page.data.length - 1].id;
    }
    // Newest first, every dataset exactly once (the two from the tests above come last).
    expect(seen.slice(0, 5)).toEqual([...names].reverse());
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen.length).toBe(await t.db.prisma.dataset.count());
    expect(pages).toBe(Math.ceil(seen.length / 2));

    const exact = await listDatasets(t.db.prisma, { limit: seen.length });
    expect(exact.hasMore).toBe(false);
    await expect(listDatasets(t.db.prisma, { limit: 0 })).rejects.toThrow(/limit/);
  });
});

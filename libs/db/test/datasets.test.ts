import { readFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../../test/support/db.ts";
import {
  createDataset,
  datasetFactsCache,
  datasetLengths,
  getDataset,
  getDatasets,
  listDatasets,
  loadDatasetRows,
} from "../src/index.ts";

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

  it("measures each dataset's longest prompt, sft example and preference pair in byte tokens, in SQL", async () => {
    const bytes = (text: string) => new TextEncoder().encode(text).length;
    // The engine's chat template (renderChatPrompt), written out by hand.
    const user = (prompt: string) => `<|user|>\n${prompt}\n<|assistant|>\n`;
    const supervised = await createDataset(t.db.prisma, {
      name: "sup",
      format: "supervised",
      rows: [
        { prompt: "Hi", response: "Hello there, friend." },
        { prompt: "A much longer question about ünïcode?", response: "Yes." },
      ],
    });
    const preference = await createDataset(t.db.prisma, {
      name: "pref",
      format: "preference",
      rows: [
        { prompt: "Q", chosen: "short", rejected: "a far longer rejected answer" },
        { prompt: "Question two", chosen: "a longer chosen answer", rejected: "no" },
      ],
    });
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hi ☺" },
      { role: "assistant", content: "Hello." },
      { role: "user", content: "Bye" },
      { role: "assistant", content: "Goodbye, see you." },
    ];
    const chat = await createDataset(t.db.prisma, {
      name: "chat",
      format: "chat",
      rows: [{ messages }, { messages: messages.slice(0, 3) }],
    });

    const lengths = await datasetLengths(t.db.prisma, [
      supervised.id,
      preference.id,
      chat.id,
      "ds_000000000000000000000000",
    ]);
    expect(lengths.get(supervised.id)).toEqual({
      prompt: bytes(user("A much longer question about ünïcode?")),
      sft: Math.max(
        bytes(user("Hi")) + bytes("Hello there, friend.") + 1,
        bytes(user("A much longer question about ünïcode?")) + bytes("Yes.") + 1,
      ),
      pair: 0,
    });
    expect(lengths.get(preference.id)).toEqual({
      prompt: bytes(user("Question two")),
      sft: bytes(user("Question two")) + bytes("a longer chosen answer") + 1,
      // the longer side of each pair: the first row's rejected answer, the second's chosen
      pair: Math.max(
        bytes(user("Q")) + bytes("a far longer rejected answer") + 1,
        bytes(user("Question two")) + bytes("a longer chosen answer") + 1,
      ),
    });
    const beforeLastAnswer =
      "<|system|>\nBe brief.\n<|user|>\nHi ☺\n<|assistant|>\nHello.\n<|user|>\nBye\n<|assistant|>\n";
    expect(lengths.get(chat.id)).toEqual({
      prompt: bytes(beforeLastAnswer),
      sft: bytes(beforeLastAnswer) + bytes("Goodbye, see you.") + 1,
      pair: 0,
    });
    expect(lengths.has("ds_000000000000000000000000")).toBe(false);
    expect(await datasetLengths(t.db.prisma, [])).toEqual(new Map());
  });

  it("measured the datasets uploaded before lengths were stored as it measures an upload", async () => {
    const rows = [
      { prompt: "Ünïcode prompt", chosen: "yes, a long chosen answer", rejected: "no" },
      { prompt: "Q", chosen: "a", rejected: "a far longer rejected answer" },
    ];
    const dataset = await createDataset(t.db.prisma, { name: "old", format: "preference", rows });
    const atUpload = await datasetLengths(t.db.prisma, [dataset.id]);
    expect(atUpload.get(dataset.id)?.pair).toBeGreaterThan(0);
    // As it was before the migration: no lengths stored.
    await t.db.prisma.dataset.update({
      where: { id: dataset.id },
      data: { longestPrompt: 0, longestSft: 0, longestPair: 0 },
    });
    const migration = await readFile(
      path.resolve(
        import.meta.dirname,
        "../../../prisma/migrations/20261201215308_dataset_longest_examples/migration.sql",
      ),
      "utf8",
    );
    const backfill = migration.slice(migration.indexOf('UPDATE "dataset"'));
    await t.db.prisma.$executeRawUnsafe(backfill);
    expect(await datasetLengths(t.db.prisma, [dataset.id])).toEqual(atUpload);
  });

  it("looks up several datasets in one query, and remembers only those it found", async () => {
    const a = await createDataset(t.db.prisma, {
      name: "a",
      format: "supervised",
      rows: [{ prompt: "p", response: "r" }],
    });
    const unknown = "ds_ffffffffffffffffffffffff";
    const found = await getDatasets(t.db.prisma, [a.id, unknown]);
    expect([...found.keys()]).toEqual([a.id]);
    expect(found.get(a.id)).toEqual({
      id: a.id,
      format: "supervised",
      rowCount: 1,
      longestPrompt: a.longestPrompt,
      longestSft: a.longestSft,
      longestPair: 0,
    });

    let queries = 0;
    const counting = new Proxy(t.db.prisma, {
      get(target, prop, receiver) {
        if (prop === "$queryRawUnsafe") queries += 1;
        return Reflect.get(target, prop, receiver);
      },
    });
    const lookup = datasetFactsCache(counting);
    const [first, second] = await Promise.all([lookup([a.id, unknown]), lookup([a.id])]);
    expect(first).toEqual(found);
    expect(second).toEqual(found);
    expect(queries).toBe(1);
    expect(await lookup([a.id])).toEqual(found);
    expect(queries).toBe(1);
    // An unknown id is asked about again: it may have been uploaded since.
    expect((await lookup([unknown])).size).toBe(0);
    expect(queries).toBe(2);
  });
});

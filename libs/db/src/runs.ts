import type { EventLevel, StageKind, Status } from "./generated/prisma/client.ts";
import { newId } from "./ids.ts";
import { isFinal, lockRun } from "./run-lock.ts";
import {
  checkLimit,
  type Db,
  fromRunJson,
  type Page,
  type PageQuery,
  type RunJson,
  type RunWithStages,
  runJsonSql,
  stagesInOrder,
  toPage,
  toRunWithStages,
  type Tx,
} from "./rows.ts";
import { queryRows, type Statement } from "./sql.ts";

const withStages = { stages: stagesInOrder } as const;

export type NewRun = {
  name: string;
  spec: unknown;
  idempotencyKey?: string;
  stages: { kind: StageKind; maxSteps: number }[];
  /** What the api noticed at submission without refusing the run (default none). */
  warnings?: string[];
  /** The run's first events, written with it, with ids in this order (default none). */
  events?: { level: EventLevel; message: string }[];
};

/** A run with its stages, as JSON built by Postgres in one statement (rows.ts). */
const RUN_JSON = runJsonSql("r", { from: '"stage"', alias: "s" });

const GET_RUN: Statement = {
  name: "chatrl_get_run",
  text: `SELECT ${RUN_JSON} AS run FROM "run" r WHERE r.id = $1`,
};

// A page of runs with their stages in one statement (through Prisma it took two, and its query
// engine's time: GET /v1/runs?limit=20 answered 377/s in bench:api). Newest first; after the
// cursor run in that order (keyset: created_at, then id); an unknown cursor gives no rows.
const LIST_RUNS: Statement = {
  name: "chatrl_list_runs",
  text: `SELECT ${RUN_JSON} AS run FROM "run" r
   WHERE ($1::text IS NULL OR r.status::text = $1::text)
     AND ($2::text IS NULL OR (r.created_at, r.id) <
       (SELECT c.created_at, c.id FROM "run" c WHERE c.id = $2::text))
   ORDER BY r.created_at DESC, r.id DESC
   LIMIT $3`,
};

const GET_RUN_BY_IDEMPOTENCY_KEY: Statement = {
  name: "chatrl_get_run_by_idempotency_key",
  text: `SELECT ${RUN_JSON} AS run FROM "run" r WHERE r.idempotency_key = $1`,
};

// One statement writes any number of runs, each with its stages and first events: one
// transaction, one commit, one round trip (the api groups concurrent submissions: groupCalls).
// ON CONFLICT waits for a concurrent insert of the same key to commit, then inserts nothing
// (and no stages or events: they are inserted per inserted run), as it does for a second run
// with the same key in the same statement; createRuns then reads the run under the key.
// WITH ORDINALITY keeps the events' ids in the order given, run after run.
const CREATE_RUNS: Statement = {
  name: "chatrl_create_runs",
  text: `WITH input AS (
     SELECT * FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (
       id text, name text, spec jsonb, idempotency_key text, warnings jsonb, stages jsonb,
       events jsonb)) WITH ORDINALITY AS x(id, name, spec, idempotency_key, warnings, stages,
       events, n)
   ), r AS (
     INSERT INTO "run" (id, name, spec, idempotency_key, warnings)
     SELECT id, name, spec, idempotency_key, ARRAY(SELECT jsonb_array_elements_text(warnings))
     FROM input ORDER BY n
     ON CONFLICT (idempotency_key) DO NOTHING
     RETURNING *
   ), s AS (
     INSERT INTO "stage" (id, run_id, kind, max_steps)
     SELECT st.id, r.id, st.kind, st.max_steps
     FROM r JOIN input i ON i.id = r.id,
       jsonb_to_recordset(i.stages) AS st(id text, kind "StageKind", max_steps int)
     RETURNING *
   ), e AS (
     INSERT INTO "run_event" (run_id, level, message)
     SELECT r.id, ev.level::"EventLevel", ev.message
     FROM r JOIN input i ON i.id = r.id,
       ROWS FROM (jsonb_to_recordset(i.events) AS (level text, message text))
         WITH ORDINALITY AS ev(level, message, k)
     ORDER BY i.n, ev.k
   )
   SELECT ${runJsonSql("r", { from: "s", alias: "st" })} AS run FROM r`,
};

/**
 * Writes the run, its stages (all queued) and its first events in one statement. A second call
 * with an idempotency key already taken (a concurrent retry) returns the run stored under that
 * key.
 */
export async function createRun(p: Db, input: NewRun): Promise<RunWithStages> {
  const [run] = await createRuns(p, [input]);
  return run;
}

/** createRun for many runs in one statement (one commit); the runs in the order given. */
export async function createRuns(p: Db, inputs: NewRun[]): Promise<RunWithStages[]> {
  if (inputs.length === 0) return [];
  const rows = inputs.map((input) => ({
    id: newId("run"),
    name: input.name,
    spec: input.spec,
    idempotency_key: input.idempotencyKey ?? null,
    warnings: input.warnings ?? [],
    stages: input.stages.map((s) => ({ id: newId("stage"), kind: s.kind, max_steps: s.maxSteps })),
    events: input.events ?? [],
  }));
  const written = await queryRows<{ run: RunJson }>(p, CREATE_RUNS, [JSON.stringify(rows)]);
  const byId = new Map(written.map(({ run }) => [run.id, run]));
  return Promise.all(
    rows.map(async (row, i) => {
      const run = byId.get(row.id);
      if (run) return fromRunJson(run);
      const key = inputs[i].idempotencyKey;
      const existing = key === undefined ? null : await findRunByIdempotencyKey(p, key);
      // Only an idempotency key can conflict; a run deleted meanwhile leaves nothing to return.
      if (!existing) throw new Error(`run '${row.name}' was not written`);
      return existing;
    }),
  );
}

/** The run with its stages in pipeline order, in one statement. */
export async function getRun(p: Db, id: string): Promise<RunWithStages | null> {
  const rows = await queryRows<{ run: RunJson }>(p, GET_RUN, [id]);
  return rows.length === 0 ? null : fromRunJson(rows[0].run);
}

/**
 * Newest first; `after` is the id of the last run of the previous page; `status` keeps only runs
 * in that status.
 */
export async function listRuns(
  p: Db,
  { after, limit, status }: PageQuery & { status?: Status },
): Promise<Page<RunWithStages>> {
  checkLimit(limit);
  const rows = await queryRows<{ run: RunJson }>(p, LIST_RUNS, [
    status ?? null,
    after ?? null,
    limit + 1,
  ]);
  return toPage(
    rows.map(({ run }) => fromRunJson(run)),
    limit,
  );
}

export async function findRunByIdempotencyKey(p: Db, key: string): Promise<RunWithStages | null> {
  const rows = await queryRows<{ run: RunJson }>(p, GET_RUN_BY_IDEMPOTENCY_KEY, [key]);
  return rows.length === 0 ? null : fromRunJson(rows[0].run);
}

/**
 * Cancels the run and its queued or running stages. A finished run is returned unchanged;
 * an unknown id gives null.
 */
export async function cancelRun(p: Db, id: string): Promise<RunWithStages | null> {
  return p.$transaction(async (tx) => {
    const run = await lockRun(tx, id);
    if (!run) return null;
    if (!isFinal(run.status)) {
      const now = new Date();
      await tx.stage.updateMany({
        where: { runId: id, status: { in: ["queued", "running"] } },
        data: { status: "cancelled", finishedAt: now },
      });
      await tx.run.update({ where: { id }, data: { status: "cancelled", finishedAt: now } });
    }
    return toRunWithStages(await tx.run.findUniqueOrThrow({ where: { id }, include: withStages }));
  });
}

/**
 * For a run whose jobs could not be queued, in one transaction: fails it as markRunFailed does,
 * takes back the info event written with it that said its stages were queued (`retract`, its
 * exact message), and records `event` (an error) in its place.
 */
export async function failUnqueuedRun(
  p: Db,
  id: string,
  opts: { error: string; retract: string; event: string },
): Promise<RunWithStages> {
  return p.$transaction(async (tx) => {
    const run = await failRun(tx, id, opts.error);
    await tx.runEvent.deleteMany({ where: { runId: id, level: "info", message: opts.retract } });
    await tx.runEvent.create({ data: { runId: id, level: "error", message: opts.event } });
    return run;
  });
}

/** For a run whose jobs could not be queued: the run and its unfinished stages fail with `message`. */
export async function markRunFailed(p: Db, id: string, message: string): Promise<RunWithStages> {
  return p.$transaction((tx) => failRun(tx, id, message));
}

async function failRun(tx: Tx, id: string, message: string): Promise<RunWithStages> {
  await lockRun(tx, id);
  const now = new Date();
  await tx.stage.updateMany({
    where: { runId: id, status: { in: ["queued", "running"] } },
    data: { status: "failed", error: message, finishedAt: now },
  });
  const run = await tx.run.update({
    where: { id },
    data: { status: "failed", error: message, finishedAt: now },
    include: withStages,
  });
  return toRunWithStages(run);
}

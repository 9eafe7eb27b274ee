import { isDeepStrictEqual } from "node:util";
import {
  ApiError,
  type components,
  modelIdFor,
  normalizeRunSpec,
  openApiRoute,
  type RunCreateRequest,
  type RunSpec,
  type StageKind,
} from "@chatrl/contracts";
import {
  addEvent,
  cancelRun,
  createRun,
  findRunByIdempotencyKey,
  getCheckpoint,
  getDataset,
  getRun,
  listEvents,
  listMetrics,
  listRuns,
  markRunFailed,
  type RunWithStages,
  type StageRow,
} from "@chatrl/db";
import { enqueueRun, QueueUnavailableError, removeRunJobs } from "@chatrl/queue";
import { MODEL_PRESETS } from "@chatrl/engine/config";
import type { FastifyInstance, FastifyReply } from "fastify";
import { unknownCursor } from "./cursor.ts";
import { unixSeconds } from "./time.ts";

type RunJson = components["schemas"]["Run"];
type StageJson = components["schemas"]["Stage"];

function toStageJson(stage: StageRow): StageJson {
  return {
    id: stage.id,
    kind: stage.kind,
    status: stage.status,
    step: stage.step,
    max_steps: stage.maxSteps,
    started_at: unixSeconds(stage.startedAt),
    finished_at: unixSeconds(stage.finishedAt),
    progress: stage.progress,
    wall_seconds: stage.wallSeconds,
    device_seconds: stage.deviceSeconds,
    tokens: stage.tokens,
    cost_usd: stage.costUsd,
    error: stage.error,
  };
}

export function toRunJson(run: RunWithStages): RunJson {
  return {
    id: run.id,
    object: "run",
    name: run.name,
    status: run.status,
    stages: run.stages.map(toStageJson),
    fine_tuned_model: servedModel(run),
    created_at: unixSeconds(run.createdAt),
    started_at: unixSeconds(run.startedAt),
    finished_at: unixSeconds(run.finishedAt),
    error: run.error,
  };
}

/** The model the inference service serves for a succeeded run: its last stage's output. */
function servedModel(run: RunWithStages): string | null {
  if (run.status !== "succeeded") return null;
  return modelIdFor(run.id, run.stages.some((s) => s.kind === "ppo") ? "actor" : "sft");
}

function notFound(what: string, id: string, param: string): ApiError {
  return new ApiError(404, `No ${what} with id '${id}'`, { param, code: "not_found" });
}

/** Compares a stored spec with a new one as JSON, which is how the stored one went through Postgres. */
function sameSpec(stored: unknown, spec: RunSpec): boolean {
  return isDeepStrictEqual(stored, JSON.parse(JSON.stringify(spec)));
}

function idempotencyKeyReused(): ApiError {
  return new ApiError(409, "This Idempotency-Key was already used for a different run", {
    param: "idempotency-key",
    code: "idempotency_key_reused",
  });
}

/** Blended sft rows past this would not fit a worker's memory (every example is tokenized up front). */
const MAX_SFT_ROWS = 1_000_000;

/**
 * Checks what the spec refers to exists, naming the first reference that does not, and that
 * the stage it describes can run: sequences fit the model, the blend gives it rows, not too many.
 */
async function checkReferences(app: FastifyInstance, spec: RunSpec): Promise<void> {
  const prisma = app.db.prisma;
  let contextLength: number | undefined;
  if ("checkpoint_id" in spec.model) {
    const id = spec.model.checkpoint_id;
    const checkpoint = await getCheckpoint(prisma, id);
    if (!checkpoint) throw notFound("checkpoint", id, "model.checkpoint_id");
    contextLength = (checkpoint.config as { contextLength?: number }).contextLength;
  } else {
    contextLength = MODEL_PRESETS[spec.model.preset].contextLength;
  }
  const maxSeqLen = spec.stages.sft.max_seq_len;
  if (contextLength !== undefined && maxSeqLen > contextLength) {
    throw new ApiError(
      422,
      `stages.sft.max_seq_len ${maxSeqLen} is longer than the model's context of ${contextLength} tokens`,
      { param: "stages.sft.max_seq_len", code: "invalid_value" },
    );
  }

  let sftRows = 0;
  const [sftShare, ...rest] = spec.data_split;
  const total = sftShare + rest.reduce((a, b) => a + b, 0);
  for (const [i, ref] of spec.datasets.entries()) {
    const dataset = await getDataset(prisma, ref.id);
    if (!dataset) throw notFound("dataset", ref.id, `datasets[${i}].id`);
    // The engine's splitForStage gives the sft stage the first round(rows * share / total),
    // and blendDatasets takes round(weight * rows) of those.
    sftRows += Math.round(ref.weight * Math.round((dataset.rowCount * sftShare) / total));
  }
  // Otherwise the run is accepted and its worker fails at once with "no examples".
  if (sftRows === 0) {
    throw new ApiError(
      422,
      `data_split [${spec.data_split.join(", ")}] and the weights give the sft stage 0 rows of ` +
        "the datasets; raise the first number of data_split or the weights, or add rows",
      { param: "data_split", code: "invalid_value" },
    );
  }
  if (sftRows > MAX_SFT_ROWS) {
    throw new ApiError(
      422,
      `the datasets' weights give the sft stage ${sftRows} rows; at most ${MAX_SFT_ROWS} fit a worker`,
      { param: "datasets", code: "invalid_value" },
    );
  }
}

export default async function runRoutes(app: FastifyInstance) {
  const prisma = app.db.prisma;

  async function loadRun(id: string): Promise<RunWithStages> {
    const run = await getRun(prisma, id);
    if (!run) throw notFound("run", id, "id");
    return run;
  }

  app.route({
    ...openApiRoute("POST", "/v1/runs"),
    handler: async (request, reply: FastifyReply) => {
      const body = request.body as RunCreateRequest;
      const idempotencyKey = request.headers["idempotency-key"] as string | undefined;
      for (const kind of ["reward", "ppo"] as const) {
        if (body.stages?.[kind]) {
          throw new ApiError(422, "reward and ppo stages are not available yet", {
            param: `stages.${kind}`,
            code: "stage_not_available",
          });
        }
      }
      const modelKeys = Object.keys(body.model);
      if (modelKeys.length !== 1) {
        throw new ApiError(400, "'model' must have exactly one of 'preset' or 'checkpoint_id'", {
          param: "model",
          code: "invalid_value",
        });
      }
      const spec = normalizeRunSpec(body);
      if (spec.data_split[0] <= 0) {
        throw new ApiError(422, "data_split: the sft share (the first number) must be above 0", {
          param: "data_split",
          code: "invalid_value",
        });
      }

      // A repeated dataset would be trained on twice over; weights are how to favour one.
      const firstIndex = new Map<string, number>();
      for (const [i, { id }] of spec.datasets.entries()) {
        const first = firstIndex.get(id);
        if (first !== undefined) {
          throw new ApiError(
            422,
            `datasets[${i}].id repeats datasets[${first}].id '${id}'; list each dataset once and give it a weight`,
            { param: `datasets[${i}].id`, code: "invalid_value" },
          );
        }
        firstIndex.set(id, i);
      }

      if (idempotencyKey) {
        const earlier = await findRunByIdempotencyKey(prisma, idempotencyKey);
        if (earlier) {
          if (!sameSpec(earlier.spec, spec)) throw idempotencyKeyReused();
          return reply.code(200).send(toRunJson(earlier));
        }
      }

      await checkReferences(app, spec);
      const run = await createRun(prisma, {
        name: spec.name,
        spec,
        idempotencyKey,
        stages: [{ kind: "sft", maxSteps: spec.stages.sft.max_steps }],
      });
      // A concurrent request with the same key may have written its run first: createRun then
      // returns that run, which is this request's only if the bodies agree.
      if (idempotencyKey && !sameSpec(run.spec, spec)) throw idempotencyKeyReused();

      try {
        // Job ids are stage ids: should a concurrent retry reach here too, nothing is queued twice.
        await enqueueRun(app.queue.flow, run, { timeoutMs: app.queue.timeoutMs });
      } catch (error) {
        if (!(error instanceof QueueUnavailableError)) throw error;
        request.log.error({ err: error, runId: run.id }, "run could not be queued");
        await markRunFailed(prisma, run.id, "The job queue (Redis) was unavailable");
        await addEvent(prisma, run.id, "error", `Could not queue the run: ${error.message}`);
        // The driver's own words (in the log and the run's events) mean little to a client.
        throw new ApiError(
          503,
          `Run ${run.id} could not be queued: the job queue (Redis) is unavailable. The run is ` +
            "recorded as failed; submit it again (with a new Idempotency-Key) once Redis is back",
          { code: "queue_unavailable" },
        );
      }
      await addEvent(
        prisma,
        run.id,
        "info",
        `Queued stages: ${run.stages.map((s) => s.kind).join(", ")}`,
      );
      return reply.code(201).send(toRunJson(run));
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/runs"),
    handler: async (request) => {
      const { after, limit } = request.query as { after?: string; limit: number };
      // Prisma answers an unknown cursor with an empty page, which reads as "no more runs".
      if (after !== undefined && !(await getRun(prisma, after))) throw unknownCursor("run", after);
      const page = await listRuns(prisma, { after, limit });
      return { object: "list" as const, data: page.data.map(toRunJson), has_more: page.hasMore };
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/runs/{id}"),
    handler: async (request) => toRunJson(await loadRun((request.params as { id: string }).id)),
  });

  app.route({
    ...openApiRoute("POST", "/v1/runs/{id}/cancel"),
    handler: async (request) => {
      const { id } = request.params as { id: string };
      const before = await loadRun(id);
      const run = (await cancelRun(prisma, id)) ?? before;
      if (before.status !== run.status) {
        // Stages already running stop at their next step: the worker reads the stage status.
        try {
          const removed = await removeRunJobs(app.queue.queues, run, {
            timeoutMs: app.queue.timeoutMs,
          });
          request.log.info({ runId: id, removed }, "removed queued jobs of cancelled run");
        } catch (error) {
          // The run is cancelled in Postgres; a worker that later takes a left-over job sees that.
          request.log.warn({ err: error, runId: id }, "could not remove queued jobs");
        }
        await addEvent(prisma, id, "info", "Cancelled by request");
      }
      return toRunJson(run);
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/runs/{id}/events"),
    handler: async (request) => {
      const { id } = request.params as { id: string };
      const { after, limit } = request.query as { after?: string; limit: number };
      await loadRun(id);
      const page = await listEvents(prisma, id, {
        after: after === undefined ? undefined : Number(after),
        limit,
      });
      return {
        object: "list" as const,
        data: page.data.map((event) => ({
          id: String(event.id),
          object: "run.event" as const,
          level: event.level,
          message: event.message,
          created_at: unixSeconds(event.time),
        })),
        has_more: page.hasMore,
      };
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/runs/{id}/metrics"),
    handler: async (request) => {
      const { id } = request.params as { id: string };
      const { stage, name } = request.query as { stage?: StageKind; name?: string };
      await loadRun(id);
      const metrics = await listMetrics(prisma, id, { stage, name });
      return {
        object: "list" as const,
        data: metrics.map((m) => ({
          stage: m.stageKind,
          step: m.step,
          name: m.name,
          value: m.value,
          time: m.time.getTime() / 1000,
        })),
      };
    },
  });
}

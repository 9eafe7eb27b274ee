import { isDeepStrictEqual } from "node:util";
import {
  ApiError,
  type components,
  modelIdFor,
  normalizeRunSpec,
  openApiRoute,
  type RunCreateRequest,
  type RunSpec,
  readRunSpec,
  type StageKind,
} from "@chatrl/contracts";
import {
  addEvent,
  cancelRun,
  coalesceReads,
  createRuns,
  datasetFactsCache,
  failUnqueuedRun,
  findRunByIdempotencyKey,
  getRun,
  groupCalls,
  listEvents,
  listMetrics,
  listRuns,
  type NewRun,
  type RunWithStages,
  type StageRow,
} from "@chatrl/db";
import {
  enqueueRun,
  enqueueRuns,
  isFlowConnected,
  QueueUnavailableError,
  type RunToEnqueue,
  removeRunJobs,
} from "@chatrl/queue";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { unknownCursor } from "./cursor.ts";
import { runDispatcher } from "./run-dispatch.ts";
import {
  checkModelSources,
  checkPipeline,
  checkSpec,
  planStages,
  resolveModels,
} from "./run-rules.ts";
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
    examples_truncated: stage.examplesTruncated,
    examples_dropped: stage.examplesDropped,
    summary: stage.summary,
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
    warnings: run.warnings,
    created_at: unixSeconds(run.createdAt),
    started_at: unixSeconds(run.startedAt),
    finished_at: unixSeconds(run.finishedAt),
    error: run.error,
  };
}

/**
 * The model to chat with once the run succeeded: the PPO actor, else the SFT model; a run that
 * trained neither (reward only) has none (reward models are never served).
 */
function servedModel(run: RunWithStages): string | null {
  if (run.status !== "succeeded") return null;
  const kinds = new Set(run.stages.map((s) => s.kind));
  if (kinds.has("ppo")) return modelIdFor(run.id, "actor");
  return kinds.has("sft") ? modelIdFor(run.id, "sft") : null;
}

function notFound(what: string, id: string, param: string): ApiError {
  return new ApiError(404, `No ${what} with id '${id}'`, { param, code: "not_found" });
}

/**
 * Compares a stored spec with a new one as JSON, which is how the stored one went through
 * Postgres; the stored one read with the defaults of settings added since (readRunSpec), so a
 * retry of a run stored before them is the same run.
 */
function sameSpec(stored: unknown, spec: RunSpec): boolean {
  return isDeepStrictEqual(readRunSpec(stored), JSON.parse(JSON.stringify(spec)));
}

function idempotencyKeyReused(): ApiError {
  return new ApiError(409, "This Idempotency-Key was already used for a different run", {
    param: "idempotency-key",
    code: "idempotency_key_reused",
  });
}

/**
 * Runs committed but whose flows are not in Redis yet, past which a submission waits for its own
 * flow before its answer: Redis then takes flows slower than runs come, and waiting keeps the
 * backlog (and what a crash would leave to the reconciler) bounded.
 */
const MAX_DISPATCH_BACKLOG = 1000;

export default async function runRoutes(app: FastifyInstance) {
  const prisma = app.db.prisma;
  // Clients polling a run (the CLI's follow, the dashboard) ask for the same run at once; they
  // share queries, each answer still read after its request arrived (coalesceReads).
  const readRun = coalesceReads((id: string) => getRun(prisma, id));
  const serializedRuns = new WeakMap<RunWithStages, Buffer>();
  const lookupDatasets = datasetFactsCache(prisma);
  // Concurrent submissions share Postgres statements (one commit for many runs: groupCalls); each
  // answers once its run is committed. One batch in flight, the next forming meanwhile: with the
  // flow no longer in the answer's path, fewer and larger commits did best in bench:api on a busy
  // 2-core machine (POST /v1/runs 1,418/s with four in flight, 1,545 with two, 1,595 with one).
  const writeRun = groupCalls((runs: NewRun[]) => createRuns(prisma, runs), { concurrency: 1 });
  // The committed runs' flows go to Redis after the answer, batched (run-dispatch.ts).
  // On the flow thread when the api has one (server.ts), else on the event loop.
  const { flow, flowThread, timeoutMs } = app.queue;
  const addRuns = flowThread
    ? (runs: RunToEnqueue[]) => flowThread.addRuns(runs, { timeoutMs })
    : (runs: RunToEnqueue[]) => enqueueRuns(flow, runs, { timeoutMs });
  const dispatcher = runDispatcher(addRuns, {
    retryDelaysMs: app.queue.dispatchRetryDelaysMs,
    onLost: async (run, error) => {
      app.log.error({ err: error, runId: run.id }, "run committed but not queued");
      await addEvent(
        prisma,
        run.id,
        "warn",
        "The job queue (Redis) did not take the run's jobs; it stays queued and the " +
          "reconciler queues it again",
      );
    },
  });
  app.addHook("onClose", () => dispatcher.close());

  /**
   * With Redis known to be down, a submission waits for it as long as a request may, and
   * otherwise fails the run it just wrote (503): a client never holds a queued run that nothing
   * will queue while it can still be told.
   */
  async function queueNow(request: FastifyRequest, run: RunWithStages, queued: string) {
    try {
      // Job ids are stage ids: should a concurrent retry reach here too, nothing is queued twice.
      await enqueueRun(app.queue.flow, run, { timeoutMs: app.queue.timeoutMs });
    } catch (error) {
      if (!(error instanceof QueueUnavailableError)) throw error;
      request.log.error({ err: error, runId: run.id }, "run could not be queued");
      await failUnqueuedRun(prisma, run.id, {
        error: "The job queue (Redis) was unavailable",
        retract: queued,
        event: `Could not queue the run: ${error.message}`,
      });
      // The driver's own words (in the log and the run's events) mean little to a client.
      throw new ApiError(
        503,
        `Run ${run.id} could not be queued: the job queue (Redis) is unavailable. The run is ` +
          "recorded as failed; submit it again (with a new Idempotency-Key) once Redis is back",
        { code: "queue_unavailable" },
      );
    }
  }

  async function loadRun(id: string): Promise<RunWithStages> {
    const run = await readRun(id);
    if (!run) throw notFound("run", id, "id");
    return run;
  }

  app.route({
    ...openApiRoute("POST", "/v1/runs"),
    handler: async (request, reply: FastifyReply) => {
      const body = request.body as RunCreateRequest;
      const idempotencyKey = request.headers["idempotency-key"] as string | undefined;
      // The rules live in run-rules.ts; nothing is stored or queued until all have passed.
      checkModelSources(body);
      checkPipeline(body);
      const contexts = await resolveModels(prisma, body);
      const spec = normalizeRunSpec(body, { ppoContextLength: contexts.ppo });
      checkSpec(body, spec, contexts);

      if (idempotencyKey) {
        const earlier = await findRunByIdempotencyKey(prisma, idempotencyKey);
        if (earlier) {
          if (!sameSpec(earlier.spec, spec)) throw idempotencyKeyReused();
          return reply.code(200).send(toRunJson(earlier));
        }
      }

      const plan = await planStages(lookupDatasets, spec);
      // The events go in with the run (one commit); should queueing fail, the first is taken back.
      const queued = `Queued stages: ${plan.stages.map((s) => s.kind).join(", ")}`;
      const run = await writeRun({
        name: spec.name,
        spec,
        idempotencyKey,
        stages: plan.stages,
        warnings: plan.warnings,
        events: [
          { level: "info", message: queued },
          ...plan.warnings.map((message) => ({ level: "warn" as const, message })),
        ],
      });
      // A concurrent request with the same key may have written its run first: createRun then
      // returns that run, which is this request's only if the bodies agree.
      if (idempotencyKey && !sameSpec(run.spec, spec)) throw idempotencyKeyReused();

      if (isFlowConnected(app.queue.flow)) {
        // Committed, so answered now: the run is queued in Postgres, its jobs follow at once.
        const dispatched = dispatcher.dispatch(run);
        if (dispatcher.backlog > MAX_DISPATCH_BACKLOG) await dispatched;
      } else {
        await queueNow(request, run, queued);
      }
      return reply.code(201).send(toRunJson(run));
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/runs"),
    handler: async (request) => {
      const { after, limit, status } = request.query as {
        after?: string;
        limit: number;
        status?: RunJson["status"];
      };
      // Prisma answers an unknown cursor with an empty page, which reads as "no more runs".
      if (after !== undefined && !(await getRun(prisma, after))) throw unknownCursor("run", after);
      const page = await listRuns(prisma, { after, limit, status });
      return { object: "list" as const, data: page.data.map(toRunJson), has_more: page.hasMore };
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/runs/{id}"),
    handler: async (request, reply) => {
      const run = await loadRun((request.params as { id: string }).id);
      // Readers that shared a query share its answer's bytes too: serialized once (by the
      // route's own serializer, so the bytes are the same), not once per reader.
      let body = serializedRuns.get(run);
      if (!body) {
        body = Buffer.from(reply.serialize(toRunJson(run)) as string);
        serializedRuns.set(run, body);
      }
      return reply.type("application/json; charset=utf-8").send(body);
    },
  });

  app.route({
    ...openApiRoute("POST", "/v1/runs/{id}/cancel"),
    handler: async (request) => {
      const { id } = request.params as { id: string };
      const before = await loadRun(id);
      const run = (await cancelRun(prisma, id)) ?? before;
      if (before.status !== run.status) {
        // Stages already running stop at their next step: the worker reads the stage status.
        // Jobs still on their way to Redis are let in first, so that they are removed too.
        await dispatcher.settled(id);
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

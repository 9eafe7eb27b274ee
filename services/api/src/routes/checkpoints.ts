import { ApiError, type components, openApiRoute } from "@chatrl/contracts";
import {
  type Checkpoint,
  getCheckpoint,
  getRun,
  listCheckpoints,
  readCheckpointPart,
} from "@chatrl/db";
import type { FastifyInstance } from "fastify";
import { unixSeconds } from "./time.ts";

type CheckpointJson = components["schemas"]["Checkpoint"];

function toCheckpointJson(checkpoint: Checkpoint): CheckpointJson {
  return {
    id: checkpoint.id,
    object: "checkpoint",
    run_id: checkpoint.runId,
    stage_id: checkpoint.stageId,
    step: checkpoint.step,
    role: checkpoint.role,
    final: checkpoint.final,
    sha256: checkpoint.sha256,
    bytes: checkpoint.bytes,
    created_at: unixSeconds(checkpoint.createdAt),
  };
}

export default async function checkpointRoutes(app: FastifyInstance) {
  const prisma = app.db.prisma;

  app.route({
    ...openApiRoute("GET", "/v1/runs/{id}/checkpoints"),
    handler: async (request) => {
      const { id } = request.params as { id: string };
      if (!(await getRun(prisma, id))) {
        throw new ApiError(404, `No run with id '${id}'`, { param: "id", code: "not_found" });
      }
      const checkpoints = await listCheckpoints(prisma, id);
      return { object: "list" as const, data: checkpoints.map(toCheckpointJson), has_more: false };
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/checkpoints/{id}/content"),
    handler: async (request, reply) => {
      const { id } = request.params as { id: string };
      const checkpoint = await getCheckpoint(prisma, id);
      if (!checkpoint) {
        throw new ApiError(404, `No checkpoint with id '${id}'`, {
          param: "id",
          code: "not_found",
        });
      }
      // The content never changes under an id, so its sha256 is a strong ETag.
      const etag = `"${checkpoint.sha256}"`;
      reply.header("etag", etag).header("x-checkpoint-sha256", checkpoint.sha256);
      if (request.headers["if-none-match"] === etag) return reply.code(304).send();
      const bytes = await readCheckpointPart(prisma, id, "model");
      if (!bytes) {
        throw new ApiError(404, `Checkpoint '${id}' has no model file`, {
          param: "id",
          code: "not_found",
        });
      }
      return reply
        .type("application/octet-stream")
        .header("content-disposition", `attachment; filename="${id}.safetensors"`)
        .send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    },
  });
}

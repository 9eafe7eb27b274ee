// OpenAI's model list: every served model name (the PPO actor, its EMA copy and the SFT model of
// each run; never a reward model or critic) with the checkpoint that answers it: the one loaded
// in this process, or, for a name not loaded here, the newest (final or not), which a request
// would load. `root` is that checkpoint, as vLLM's `root` names the weights a model was loaded
// from; run_id, role, step and final say what it is.
import { ApiError, openApiRoute } from "@chatrl/contracts";
import type { FastifyInstance } from "fastify";
import { listServedModels } from "../model-catalog.ts";

export default async function modelRoutes(app: FastifyInstance) {
  app.route({
    ...openApiRoute("GET", "/v1/models"),
    handler: async () => {
      const newest = await listServedModels(app.db.prisma);
      const models = newest.map((model) => app.modelRegistry.answering(model.id) ?? model);
      return {
        object: "list",
        data: models.map((model) => ({
          id: model.id,
          object: "model",
          created: model.created,
          owned_by: "chatrl",
          root: model.checkpointId,
          ...(model.contextLength ? { max_model_len: model.contextLength } : {}),
          run_id: model.runId,
          role: model.role,
          step: model.step,
          final: model.final,
        })),
      };
    },
  });
}

export function unknownModel(id: string): ApiError {
  return new ApiError(404, `The model '${id}' does not exist`, {
    type: "invalid_request_error",
    param: "model",
    code: "model_not_found",
  });
}

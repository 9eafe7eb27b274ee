import { ApiError, type components, JsonlError, openApiRoute, parseJsonl } from "@chatrl/contracts";
import { createDataset, type Dataset, getDataset, listDatasets } from "@chatrl/db";
import type { FastifyInstance } from "fastify";
import { unknownCursor } from "./cursor.ts";
import { unixSeconds } from "./time.ts";

type DatasetJson = components["schemas"]["Dataset"];

function toDatasetJson(dataset: Dataset): DatasetJson {
  return {
    id: dataset.id,
    object: "dataset",
    name: dataset.name,
    format: dataset.format,
    rows: dataset.rowCount,
    created_at: unixSeconds(dataset.createdAt),
  };
}

const JSONL_TYPES = ["application/x-ndjson", "application/jsonl"];

export default async function datasetRoutes(
  app: FastifyInstance,
  opts: { maxUploadBytes: number },
) {
  // JSONL arrives as text; parseJsonl validates it line by line in the handler.
  app.addContentTypeParser(
    JSONL_TYPES,
    { parseAs: "string", bodyLimit: opts.maxUploadBytes },
    (_request, body, done) => done(null, body),
  );

  app.route({
    ...openApiRoute("POST", "/v1/datasets"),
    bodyLimit: opts.maxUploadBytes,
    handler: async (request, reply) => {
      if (typeof request.body !== "string") {
        throw new ApiError(
          415,
          "Upload the dataset as JSONL with Content-Type: application/x-ndjson",
          {
            code: "unsupported_media_type",
          },
        );
      }
      const { name } = request.query as { name: string };
      let parsed: ReturnType<typeof parseJsonl>;
      try {
        parsed = parseJsonl(request.body);
      } catch (error) {
        if (!(error instanceof JsonlError)) throw error;
        throw new ApiError(400, `Invalid JSONL: ${error.message}`, {
          param: "body",
          code: "invalid_jsonl",
        });
      }
      const dataset = await createDataset(app.db.prisma, { name, ...parsed });
      reply.code(201);
      return toDatasetJson(dataset);
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/datasets"),
    handler: async (request) => {
      const { after, limit } = request.query as { after?: string; limit: number };
      // Prisma answers an unknown cursor with an empty page, which reads as "no more datasets".
      if (after !== undefined && !(await getDataset(app.db.prisma, after))) {
        throw unknownCursor("dataset", after);
      }
      const page = await listDatasets(app.db.prisma, { after, limit });
      return {
        object: "list" as const,
        data: page.data.map(toDatasetJson),
        has_more: page.hasMore,
      };
    },
  });

  app.route({
    ...openApiRoute("GET", "/v1/datasets/{id}"),
    handler: async (request) => {
      const { id } = request.params as { id: string };
      const dataset = await getDataset(app.db.prisma, id);
      if (!dataset) {
        throw new ApiError(404, `No dataset with id '${id}'`, { param: "id", code: "not_found" });
      }
      return toDatasetJson(dataset);
    },
  });
}

import { ApiError, type components, JsonlError, openApiRoute, parseJsonl } from "@chatrl/contracts";
import { coalesceReads, createDataset, type Dataset, getDataset, listDatasets } from "@chatrl/db";
import { isUtf8 } from "node:buffer";
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

const UPLOAD_AS_JSONL =
  "Upload the dataset as JSONL (one JSON object a line) with Content-Type: application/x-ndjson";

/** The charset parameter of a Content-Type header, lower-cased, if any. */
function charsetOf(contentType: string | undefined): string | undefined {
  return /;\s*charset\s*=\s*"?([^";\s]+)"?/i.exec(contentType ?? "")?.[1]?.toLowerCase();
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The upload as text, or a 400 naming the first line that is not valid UTF-8 (a decoder that
 * replaced the bytes with U+FFFD would store text the user never wrote).
 */
function decodeUtf8(body: Buffer): string {
  try {
    return utf8.decode(body);
  } catch {
    let line = 1;
    let start = 0;
    for (;;) {
      const end = body.indexOf(0x0a, start);
      const piece = body.subarray(start, end === -1 ? body.length : end);
      if (!isUtf8(piece)) break;
      if (end === -1) break;
      line += 1;
      start = end + 1;
    }
    throw new ApiError(400, `Invalid JSONL: line ${line}: not valid UTF-8`, {
      param: "body",
      code: "invalid_utf8",
    });
  }
}

export default async function datasetRoutes(
  app: FastifyInstance,
  opts: { maxUploadBytes: number },
) {
  // Readers of one dataset at once share a query, each still read after it asked (as runs do):
  // fifty clients on one dataset cost one query per round trip, not fifty waiting for the pool.
  const readDataset = coalesceReads((id: string) => getDataset(app.db.prisma, id));
  // JSONL arrives as bytes, decoded as strict UTF-8 in the handler; parseJsonl validates it
  // line by line. Another charset is refused before the body is read.
  app.addContentTypeParser(
    JSONL_TYPES,
    { parseAs: "buffer", bodyLimit: opts.maxUploadBytes },
    (request, body, done) => {
      const charset = charsetOf(request.headers["content-type"]);
      if (charset !== undefined && charset !== "utf-8" && charset !== "utf8") {
        return done(
          new ApiError(415, `Uploads must be UTF-8; got charset=${charset}`, {
            code: "unsupported_charset",
          }),
          undefined,
        );
      }
      done(null, body);
    },
  );
  // A JSONL upload sent as application/json would fail as "not valid JSON": say what to send.
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", (_request, _payload, done) =>
    done(
      new ApiError(415, `${UPLOAD_AS_JSONL}, not application/json`, {
        code: "unsupported_media_type",
      }),
      undefined,
    ),
  );

  app.route({
    ...openApiRoute("POST", "/v1/datasets"),
    bodyLimit: opts.maxUploadBytes,
    handler: async (request, reply) => {
      if (!Buffer.isBuffer(request.body)) {
        throw new ApiError(415, UPLOAD_AS_JSONL, { code: "unsupported_media_type" });
      }
      const { name } = request.query as { name: string };
      const text = decodeUtf8(request.body);
      let parsed: ReturnType<typeof parseJsonl>;
      try {
        parsed = parseJsonl(text);
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
      const dataset = await readDataset(id);
      if (!dataset) {
        throw new ApiError(404, `No dataset with id '${id}'`, { param: "id", code: "not_found" });
      }
      return toDatasetJson(dataset);
    },
  });
}

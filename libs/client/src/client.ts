// A typed HTTP client for the chatrl api and inference service, generated from
// openapi/openapi.yaml through openapi-fetch: request and response types follow the contract.
import type { components, paths } from "@chatrl/contracts";
import { EventSourceParserStream } from "eventsource-parser/stream";
import createClient, { type Client } from "openapi-fetch";
import { ChatrlApiError, ChatrlConnectionError } from "./errors.ts";

type Schemas = components["schemas"];
export type Dataset = Schemas["Dataset"];
export type DatasetList = Schemas["DatasetList"];
export type Run = Schemas["Run"];
export type RunList = Schemas["RunList"];
export type RunCreateRequest = Schemas["RunCreateRequest"];
export type RunEventList = Schemas["RunEventList"];
export type MetricList = Schemas["MetricList"];
export type CheckpointList = Schemas["CheckpointList"];
export type CostSummary = Schemas["CostSummary"];
export type ModelList = Schemas["ModelList"];
export type ChatCompletionRequest = Schemas["ChatCompletionRequest"];
export type ChatCompletion = Schemas["ChatCompletion"];
export type ChatCompletionChunk = Schemas["ChatCompletionChunk"];
export type StageKind = Schemas["StageKind"];
export type Page = { after?: string; limit?: number };

export type ChatrlClientOptions = {
  baseUrl: string;
  apiKey?: string;
  /** For tests and custom transports; defaults to the global fetch. */
  fetch?: (request: Request) => Promise<Response>;
};

type Outcome<T> = { data?: T; error?: unknown; response: Response };

export type ChatrlClient = ReturnType<typeof createChatrlClient>;

export function createChatrlClient(options: ChatrlClientOptions) {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const raw: Client<paths> = createClient<paths>({
    baseUrl,
    headers: options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {},
    ...(options.fetch ? { fetch: options.fetch } : {}),
  });

  /** Awaits a call, turning a refused connection or an error answer into one thrown error. */
  async function call<T>(request: Promise<Outcome<T>>): Promise<T> {
    let outcome: Outcome<T>;
    try {
      outcome = await request;
    } catch (error) {
      throw new ChatrlConnectionError(baseUrl, error);
    }
    if (!outcome.response.ok) throw ChatrlApiError.from(outcome.response.status, outcome.error);
    return outcome.data as T;
  }

  return {
    baseUrl,
    /** The underlying openapi-fetch client, for routes without a helper. */
    raw,

    uploadDataset: (name: string, jsonl: string) =>
      call(
        raw.POST("/v1/datasets", {
          params: { query: { name } },
          body: jsonl,
          headers: { "content-type": "application/x-ndjson" },
          bodySerializer: (body) => body,
        }),
      ),
    listDatasets: (page: Page = {}) => call(raw.GET("/v1/datasets", { params: { query: page } })),
    getDataset: (id: string) => call(raw.GET("/v1/datasets/{id}", { params: { path: { id } } })),

    createRun: (spec: RunCreateRequest, opts: { idempotencyKey?: string } = {}) =>
      call(
        raw.POST("/v1/runs", {
          body: spec,
          params: {
            header: opts.idempotencyKey ? { "idempotency-key": opts.idempotencyKey } : {},
          },
        }),
      ),
    listRuns: (page: Page = {}) => call(raw.GET("/v1/runs", { params: { query: page } })),
    getRun: (id: string) => call(raw.GET("/v1/runs/{id}", { params: { path: { id } } })),
    cancelRun: (id: string) => call(raw.POST("/v1/runs/{id}/cancel", { params: { path: { id } } })),
    listRunEvents: (id: string, page: Page = {}) =>
      call(raw.GET("/v1/runs/{id}/events", { params: { path: { id }, query: page } })),
    listRunMetrics: (id: string, filter: { stage?: StageKind; name?: string } = {}) =>
      call(raw.GET("/v1/runs/{id}/metrics", { params: { path: { id }, query: filter } })),
    listRunCheckpoints: (id: string) =>
      call(raw.GET("/v1/runs/{id}/checkpoints", { params: { path: { id } } })),
    costSummary: (groupBy: "run" | "stage" | "day" = "run") =>
      call(raw.GET("/v1/dashboard/costs", { params: { query: { group_by: groupBy } } })),

    listModels: () => call(raw.GET("/v1/models")),
    // The 200 answer is JSON here (stream: false); the contract also lists the event stream.
    createChatCompletion: (request: ChatCompletionRequest) =>
      call(
        raw.POST("/v1/chat/completions", { body: { ...request, stream: false } }),
      ) as Promise<ChatCompletion>,

    /** Streams a chat completion: yields each `chat.completion.chunk` as it arrives. */
    async *streamChatCompletion(
      request: ChatCompletionRequest,
      opts: { signal?: AbortSignal } = {},
    ): AsyncGenerator<ChatCompletionChunk> {
      const body = await call(
        raw.POST("/v1/chat/completions", {
          body: { ...request, stream: true },
          parseAs: "stream",
          signal: opts.signal,
        }),
      );
      if (!body) throw new ChatrlApiError(502, "the server sent no event stream");
      const events = body
        .pipeThrough(new TextDecoderStream())
        .pipeThrough(new EventSourceParserStream());
      for await (const event of events) {
        if (event.data === "[DONE]") return;
        const data = JSON.parse(event.data) as ChatCompletionChunk | { error: unknown };
        if ("error" in data) throw ChatrlApiError.from(500, data);
        yield data;
      }
    },
  };
}

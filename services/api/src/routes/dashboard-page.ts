// GET /dashboard: the page runs are watched on, and GET /dashboard/assets/<file>: its scripts
// and styles (services/api/src/static) and its chart library, uPlot, read from node_modules.
// Nothing is built: the files are ES modules the browser loads as they are. All are read once
// at start and answered from memory with an ETag.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { ApiError, openApiRoute } from "@chatrl/contracts";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";

const STATIC = new URL("../static/", import.meta.url);
const require = createRequire(import.meta.url);

/** Asset name -> where it is read from; nothing else is served. */
const ASSETS: Record<string, URL | string> = {
  "dashboard.js": new URL("dashboard.js", STATIC),
  "api.js": new URL("api.js", STATIC),
  "dom.js": new URL("dom.js", STATIC),
  "charts.js": new URL("charts.js", STATIC),
  "runs.js": new URL("runs.js", STATIC),
  "run.js": new URL("run.js", STATIC),
  "costs.js": new URL("costs.js", STATIC),
  "dashboard.css": new URL("dashboard.css", STATIC),
  "uplot.min.js": require.resolve("uplot/dist/uPlot.iife.min.js"),
  "uplot.min.css": require.resolve("uplot/dist/uPlot.min.css"),
};

type File = { body: Buffer; type: string; etag: string };

const TYPES: Record<string, string> = {
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  html: "text/html; charset=utf-8",
};

async function load(source: URL | string): Promise<File> {
  const body = await readFile(source);
  const name = typeof source === "string" ? source : source.pathname;
  const type = TYPES[name.slice(name.lastIndexOf(".") + 1)];
  const etag = `"${createHash("sha256").update(body).digest("hex").slice(0, 32)}"`;
  return { body, type, etag };
}

/** Sends a file; browsers revalidate each time (no-cache), and an unchanged one costs a 304. */
function send(request: FastifyRequest, reply: FastifyReply, file: File) {
  reply.header("etag", file.etag).header("cache-control", "no-cache");
  if (request.headers["if-none-match"] === file.etag) return reply.code(304).send();
  return reply.type(file.type).send(file.body);
}

export default async function dashboardPageRoutes(app: FastifyInstance) {
  const page = await load(new URL("dashboard.html", STATIC));
  const assets = new Map<string, File>();
  for (const [name, source] of Object.entries(ASSETS)) assets.set(name, await load(source));

  app.route({
    ...openApiRoute("GET", "/dashboard"),
    handler: async (request, reply) => send(request, reply, page),
  });
  app.route({
    ...openApiRoute("GET", "/dashboard/assets/{file}"),
    handler: async (request, reply) => {
      const { file } = request.params as { file: string };
      const asset = assets.get(file);
      if (!asset) {
        throw new ApiError(404, `No dashboard asset '${file}'`, {
          param: "file",
          code: "not_found",
        });
      }
      return send(request, reply, asset);
    },
  });
}

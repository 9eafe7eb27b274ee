// bull-board at /admin/queues: the stage queues' jobs, for an operator to see and retry without
// redis-cli. Behind the API key like every other route; because a browser cannot add a bearer
// header to a page it navigates to, the key may also arrive as the password of HTTP basic
// authentication (the browser asks once, then sends it with each of the board's requests).
// Without keys configured the board is open, as the rest of the api is.
import { createBullBoard } from "@bull-board/api";
import { BullMQAdapter } from "@bull-board/api/bullMQAdapter";
import { FastifyAdapter } from "@bull-board/fastify";
import type { FastifyInstance, FastifyRequest } from "fastify";

export const QUEUE_BOARD_PATH = "/admin/queues";

/** The key a request carries: a bearer token, or basic auth's password (its user if empty). */
export function presentedKey(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization ?? "";
  const [scheme, value = ""] = header.split(" ", 2);
  if (/^bearer$/i.test(scheme)) return value.trim() || undefined;
  if (/^basic$/i.test(scheme)) {
    const decoded = Buffer.from(value, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon === -1) return undefined;
    return decoded.slice(colon + 1) || decoded.slice(0, colon) || undefined;
  }
  return undefined;
}

function errorBody(message: string, { type, code }: { type: string; code: string }) {
  return { error: { message, type, param: null, code } };
}

/** Registered on the root: a plugin context of its own, so its hooks touch only the board. */
export async function queueBoardPlugin(app: FastifyInstance) {
  const adapter = new FastifyAdapter();
  createBullBoard({
    queues: Object.values(app.queue.queues).map((queue) => new BullMQAdapter(queue)),
    serverAdapter: adapter,
    options: { uiConfig: { boardTitle: "chatrl queues" } },
  });
  adapter.setBasePath(QUEUE_BOARD_PATH);

  await app.register(async (board) => {
    // The root auth hook passes public routes; this context checks the key its own way.
    board.addHook("onRoute", (route) => {
      route.config = { ...route.config, public: true };
    });
    // Replies are sent here, not thrown: bull-board's own error handler would reshape them.
    board.addHook("onRequest", async (request, reply) => {
      // Browsers send basic credentials with any request to the origin, even one a foreign
      // page starts: changes must come from the board's own pages.
      const site = request.headers["sec-fetch-site"];
      if (request.method !== "GET" && site !== undefined && site !== "same-origin") {
        return reply.code(403).send(
          errorBody("Queue changes are accepted from the board's own pages only", {
            type: "permission_error",
            code: "cross_site_request",
          }),
        );
      }
      if (!(await app.apiKeys.required())) return;
      const key = presentedKey(request);
      if (key && (await app.apiKeys.verify(key))) return;
      return reply
        .code(401)
        .header("www-authenticate", 'Basic realm="chatrl queues", charset="UTF-8"')
        .send(
          errorBody(
            "Missing or invalid API key: send 'Authorization: Bearer <key>', or the key as the basic-auth password",
            { type: "authentication_error", code: "invalid_api_key" },
          ),
        );
    });
    await board.register(adapter.registerPlugin(), { prefix: QUEUE_BOARD_PATH });
  });
}

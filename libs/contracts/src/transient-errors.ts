// Which errors mean "a dependency is unreachable for now" (retry later) rather than "this request
// or this training step is wrong" (fail it). The api answers the first kind with 503 and the
// worker pauses a stage on it; matched by name, code and message so contracts depends on neither
// the Prisma client nor ioredis.

// Prisma's codes for a database that cannot be reached or answers too late (Prisma's error
// reference): can't reach, timed out, closed the connection, pool timeout.
const PRISMA_UNAVAILABLE = new Set(["P1001", "P1002", "P1008", "P1017", "P2024"]);

// What @prisma/adapter-pg reports in `meta.driverAdapterError.cause.kind` for a lost server.
const ADAPTER_UNAVAILABLE = new Set([
  "DatabaseNotReachable",
  "ConnectionClosed",
  "SocketTimeout",
  "TooManyConnections",
]);

// Postgres SQLSTATEs: class 08 (connection exception), 57P01-57P03 (server shutting down or
// starting), 53300 (too many connections).
const POSTGRES_UNAVAILABLE = /^(08...|57P0[123]|53300)$/;

// Socket-level failures, as Node (and pg, ioredis) report them.
const SOCKET_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

// Messages of pg and ioredis for a connection that went away under a query or command.
const LOST_CONNECTION = [
  /Connection terminated/i,
  /Client has encountered a connection error/i,
  /Can't reach database server/i,
  /server closed the connection/i,
  /Connection is closed/i,
  /Stream isn't writeable/i,
  /Command timed out/i,
  /Reached the max retries per request limit/i,
  /^LOADING /,
];

type ErrorLike = {
  name?: unknown;
  code?: unknown;
  message?: unknown;
  meta?: { driverAdapterError?: { cause?: { kind?: unknown; code?: unknown } } };
  cause?: unknown;
};

/** Postgres could not be reached, or dropped the connection: retry later, nothing is wrong. */
export function isDatabaseUnavailable(error: unknown): boolean {
  return someInChain(error, (e) => {
    const name = typeof e.name === "string" ? e.name : "";
    if (name.startsWith("PrismaClient") && PRISMA_UNAVAILABLE.has(String(e.code))) return true;
    const cause = e.meta?.driverAdapterError?.cause;
    if (cause && ADAPTER_UNAVAILABLE.has(String(cause.kind))) return true;
    if (cause?.kind === "postgres" && POSTGRES_UNAVAILABLE.test(String(cause.code))) return true;
    // pg's own errors (DatabaseError) carry the SQLSTATE as code.
    if (typeof e.code === "string" && POSTGRES_UNAVAILABLE.test(e.code)) return true;
    return false;
  });
}

/** Redis (the job queue) could not be reached or dropped the connection. */
export function isQueueUnavailable(error: unknown): boolean {
  return someInChain(
    error,
    (e) =>
      e.name === "QueueUnavailableError" ||
      e.name === "MaxRetriesPerRequestError" ||
      (e.name === "ReplyError" && typeof e.message === "string" && /^LOADING /.test(e.message)),
  );
}

/**
 * A dependency (Postgres or Redis) is unreachable, or a connection to it broke: the work may be
 * retried once it is back. Everything else is a real error.
 */
export function isTransientError(error: unknown): boolean {
  if (isDatabaseUnavailable(error) || isQueueUnavailable(error)) return true;
  return someInChain(error, (e) => {
    if (typeof e.code === "string" && SOCKET_CODES.has(e.code)) return true;
    const message = typeof e.message === "string" ? e.message : "";
    return LOST_CONNECTION.some((pattern) => pattern.test(message));
  });
}

/** Tests `error` and its `cause` chain (bounded: causes can be cyclic). */
function someInChain(error: unknown, test: (e: ErrorLike) => boolean): boolean {
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current && typeof current === "object"; depth++) {
    if (test(current as ErrorLike)) return true;
    current = (current as ErrorLike).cause;
  }
  return false;
}

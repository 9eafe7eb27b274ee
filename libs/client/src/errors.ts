// Errors the client raises, each able to say in one line what went wrong.

/** The server answered with the `{"error":{message,type,param,code}}` shape (or something else). */
export class ChatrlApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string | null = null,
    readonly param: string | null = null,
    readonly code: string | number | null = null,
  ) {
    super(message);
    this.name = "ChatrlApiError";
  }

  /** From an error body; anything not in the error shape still gives a readable message. */
  static from(status: number, body: unknown): ChatrlApiError {
    const error = (body as { error?: Record<string, unknown> } | null)?.error;
    if (error && typeof error.message === "string") {
      return new ChatrlApiError(
        status,
        error.message,
        typeof error.type === "string" ? error.type : null,
        typeof error.param === "string" ? error.param : null,
        typeof error.code === "string" || typeof error.code === "number" ? error.code : null,
      );
    }
    const text = typeof body === "string" && body.trim() ? `: ${body.trim().slice(0, 200)}` : "";
    return new ChatrlApiError(status, `HTTP ${status}${text}`);
  }

  /** e.g. `404 model not found (param: model): The model 'x' does not exist`. */
  describe(): string {
    const kind = [this.status, this.code ?? this.type].filter((p) => p !== null).join(" ");
    const param = this.param ? ` (param: ${this.param})` : "";
    return `${kind}${param}: ${this.message}`;
  }
}

/** Nothing answered at the URL (refused, unknown host, reset). */
export class ChatrlConnectionError extends Error {
  constructor(
    readonly url: string,
    cause: unknown,
  ) {
    const reason = connectionReason(cause);
    super(`cannot reach ${url}${reason ? ` (${reason})` : ""}`, { cause });
    this.name = "ChatrlConnectionError";
  }
}

function connectionReason(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } })?.cause;
  return cause?.code ?? cause?.message ?? (error as Error)?.message ?? "";
}

/** One line for the terminal, whatever was thrown. */
export function describeError(error: unknown): string {
  if (error instanceof ChatrlApiError) return error.describe();
  if (error instanceof Error) return error.message;
  return String(error);
}

import { randomHex } from "@chatrl/db";

/** `req_` and 24 hex digits (96 random bits), as x-request-id. */
export function newRequestId(): string {
  return `req_${randomHex(12)}`;
}

import { randomFillSync } from "node:crypto";

export type IdPrefix = "run" | "stage" | "ds" | "ckpt" | "key";

/** `<prefix>_<24 lowercase hex>`: 96 random bits, and no `:` so it can be a BullMQ job id. */
export function newId(prefix: IdPrefix): string {
  return `${prefix}_${randomHex(12)}`;
}

// Random bytes are drawn from the system 4 KiB at a time: asking for 12 bytes per id (four per
// run submission, one per api request for its x-request-id) showed in profiles under load.
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let offset = POOL_BYTES;

/** `bytes` cryptographically random bytes (at most 4096) as lowercase hex. */
export function randomHex(bytes: number): string {
  if (bytes > POOL_BYTES) throw new RangeError(`at most ${POOL_BYTES} bytes, got ${bytes}`);
  if (offset + bytes > POOL_BYTES) {
    randomFillSync(pool);
    offset = 0;
  }
  const hex = pool.toString("hex", offset, offset + bytes);
  offset += bytes;
  return hex;
}

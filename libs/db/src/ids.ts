import { randomBytes } from "node:crypto";

export type IdPrefix = "run" | "stage" | "ds" | "ckpt" | "key";

/** `<prefix>_<24 lowercase hex>`: 96 random bits, and no `:` so it can be a BullMQ job id. */
export function newId(prefix: IdPrefix): string {
  return `${prefix}_${randomBytes(12).toString("hex")}`;
}

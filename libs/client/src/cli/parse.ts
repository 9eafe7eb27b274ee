// Option parsers: a bad value is a usage error that names the value.
import { InvalidArgumentError } from "commander";

export function toInt(value: string): number {
  const n = Number.parseInt(value, 10);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) {
    throw new InvalidArgumentError(`not a whole number: ${value}`);
  }
  return n;
}

export function toNumber(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) {
    throw new InvalidArgumentError(`not a number: ${value}`);
  }
  return n;
}

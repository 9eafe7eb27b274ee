// A seeded random number generator whose state can be saved and restored, so that a trainer
// resumed from a checkpoint draws the same numbers an uninterrupted one would.
// Alea from seedrandom (the generator tfjs itself uses for seeded ops).
import seedrandom from "seedrandom";

/** Alea's full state: three floats and a carry. JSON-safe. */
export type RngState = seedrandom.State.Alea;

export class Rng {
  private readonly prng: seedrandom.StatefulPRNG<RngState>;

  private constructor(prng: seedrandom.StatefulPRNG<RngState>) {
    this.prng = prng;
  }

  /** A generator seeded from a number or string; equal seeds give equal sequences. */
  static create(seed: number | string): Rng {
    return new Rng(seedrandom.alea(String(seed), { state: true }));
  }

  /** A generator that continues exactly where the one that exported `state` was. */
  static fromState(state: RngState): Rng {
    for (const key of ["c", "s0", "s1", "s2"] as const) {
      if (typeof state?.[key] !== "number")
        throw new Error(`invalid RNG state: missing number "${key}"`);
    }
    return new Rng(seedrandom.alea("", { state: { ...state } }));
  }

  exportState(): RngState {
    return { ...this.prng.state() };
  }

  /** Uniform float in [0, 1) with 53 bits of randomness. */
  next(): number {
    return this.prng.double();
  }

  /** Uniform unsigned 32-bit integer, e.g. a seed for a tfjs random op. */
  nextUint32(): number {
    return this.prng.int32() >>> 0;
  }

  /** Uniform integer in [0, n). */
  nextInt(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** A new array with the items of `items` in a random order (Fisher-Yates). */
  shuffled<T>(items: readonly T[]): T[] {
    const out = items.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }
}

/** A random order of 0..n-1 that depends only on `seed`. */
export function seededPermutation(n: number, seed: number | string): number[] {
  return Rng.create(seed).shuffled(Array.from({ length: n }, (_, i) => i));
}

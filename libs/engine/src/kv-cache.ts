// Keys and values of the positions a model has already seen, one pair per layer, so that
// generation feeds only the new token instead of the whole sequence. Rows can be added, dropped
// and realigned between forward passes: that is what continuous batching (./decode-batch) needs.
import * as tf from "@tensorflow/tfjs";

export class KVCache {
  /**
   * Set by an owner that keeps every row's padding (positions before its first token) as zero
   * keys and values: decode steps may then use the fused attention kernel (padded-attention.ts).
   */
  zeroPadding = false;
  private readonly keys: (tf.Tensor4D | undefined)[];
  private readonly values: (tf.Tensor4D | undefined)[];

  constructor(nLayers: number) {
    this.keys = new Array(nLayers).fill(undefined);
    this.values = new Array(nLayers).fill(undefined);
  }

  /** Positions cached so far (the same for every layer between forward passes). */
  get length(): number {
    return this.keys[0]?.shape[2] ?? 0;
  }

  /** Rows (batch entries) cached. */
  get rows(): number {
    return this.keys[0]?.shape[0] ?? 0;
  }

  /**
   * Appends this step's keys and values of one layer and returns the whole cached sequence.
   * k, v: [B, nh, T, hs] -> [B, nh, past + T, hs]. The returned tensors belong to the cache
   * (they survive the caller's tf.tidy); the previous ones are released.
   */
  append(layer: number, k: tf.Tensor4D, v: tf.Tensor4D): [tf.Tensor4D, tf.Tensor4D] {
    const oldK = this.keys[layer];
    const oldV = this.values[layer];
    const fullK = tf.keep(oldK ? tf.concat([oldK, k], 2) : k.clone());
    const fullV = tf.keep(oldV ? tf.concat([oldV, v], 2) : v.clone());
    oldK?.dispose();
    oldV?.dispose();
    this.keys[layer] = fullK;
    this.values[layer] = fullV;
    return [fullK, fullV];
  }

  /**
   * Keeps the rows at `rows`, in that order (an index may repeat: one prefilled prompt becomes
   * several rows). No rows empties the cache.
   */
  selectRows(rows: readonly number[]): void {
    if (rows.length === 0) {
      this.dispose();
      return;
    }
    const index = tf.tensor1d(Int32Array.from(rows), "int32");
    this.replaceEach((t) => tf.gather(t, index, 0));
    index.dispose();
  }

  /** Adds `n` zero positions at the start of every row (left padding). [B, nh, T, hs] -> [B, nh, n + T, hs] */
  padStart(n: number): void {
    if (n <= 0 || this.length === 0) return;
    this.replaceEach((t) => {
      const [b, h, , s] = t.shape;
      return tf.tidy(() => tf.concat([tf.zeros([b, h, n, s]), t], 2));
    });
  }

  /** Zeroes the first `counts[b]` positions of row b (the keys and values of padding tokens). */
  zeroStart(counts: readonly number[]): void {
    if (counts.every((n) => n === 0) || this.length === 0) return;
    const time = this.length;
    const keep = new Float32Array(counts.length * time).fill(1);
    for (const [b, n] of counts.entries()) keep.fill(0, b * time, b * time + n);
    const mask = tf.tensor4d(keep, [counts.length, 1, time, 1]);
    this.replaceEach((t) => tf.mul(t, mask));
    mask.dispose();
  }

  /** Drops the first `n` positions of every row (padding no row needs any more). */
  dropStart(n: number): void {
    if (n <= 0) return;
    this.replaceEach((t) => {
      const [b, h, time, s] = t.shape;
      return tf.slice(t, [0, 0, n, 0], [b, h, time - n, s]);
    });
  }

  /** Appends the rows of `other` (same length) after this cache's rows; `other` is emptied. */
  concatRows(other: KVCache): void {
    if (other.length === 0) return;
    if (this.length === 0) {
      for (let l = 0; l < this.keys.length; l++) {
        this.keys[l] = other.keys[l];
        this.values[l] = other.values[l];
      }
    } else {
      if (other.length !== this.length)
        throw new Error(`cannot join caches of ${this.length} and ${other.length} positions`);
      for (let l = 0; l < this.keys.length; l++) {
        const k = tf.concat([this.keys[l] as tf.Tensor4D, other.keys[l] as tf.Tensor4D], 0);
        const v = tf.concat([this.values[l] as tf.Tensor4D, other.values[l] as tf.Tensor4D], 0);
        tf.dispose([this.keys[l], this.values[l], other.keys[l], other.values[l]]);
        this.keys[l] = k;
        this.values[l] = v;
      }
    }
    other.keys.fill(undefined);
    other.values.fill(undefined);
  }

  /** Bytes the cached tensors hold. */
  bytes(): number {
    let total = 0;
    for (const t of [...this.keys, ...this.values]) total += (t?.size ?? 0) * 4;
    return total;
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(undefined);
    this.values.fill(undefined);
  }

  private replaceEach(fn: (t: tf.Tensor4D) => tf.Tensor4D): void {
    for (const list of [this.keys, this.values]) {
      for (let l = 0; l < list.length; l++) {
        const old = list[l];
        if (!old) continue;
        list[l] = fn(old);
        old.dispose();
      }
    }
  }
}

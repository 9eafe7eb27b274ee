// Keys and values of the positions a model has already seen, one pair per layer, so that
// generation feeds only the new token instead of the whole sequence (generate() and PPO's
// rollouts; continuous batching keeps its rows in ./paged-kv-cache, which a prefill fills from
// one of these).
import * as tf from "@tensorflow/tfjs";

export class KVCache {
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

  /** One layer's cached keys and values, [B, nh, T, hs] each (owned by the cache). */
  layer(layer: number): [tf.Tensor4D, tf.Tensor4D] {
    const k = this.keys[layer];
    const v = this.values[layer];
    if (!k || !v) throw new Error(`layer ${layer} has nothing cached`);
    return [k, v];
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
}

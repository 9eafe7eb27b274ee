// Concurrent calls sharing work, without changing what any caller sees.
//
// coalesceReads: concurrent identical reads share one query, without reading stale data: a read
// waits for the next query to start, never joins one already under way. Every answer therefore
// reflects the database at some moment after the read was asked for (a write that committed
// before the request arrived is always seen), as a query of its own would; nothing is cached.
// Fifty clients polling one run cost one query per round trip instead of fifty.
//
// groupCalls: concurrent writes go to the database together (group commit).

/**
 * Wraps `load` so that calls with the same key share queries: a call made while no query for
 * its key runs starts one; a call made while one runs waits for it to end and shares the one
 * query started then with every other call that arrived meanwhile. Errors reach every sharer.
 * Sharers get the same value: they must not change it.
 */
export function coalesceReads<K, V>(load: (key: K) => Promise<V>): (key: K) => Promise<V> {
  const running = new Map<K, Promise<V>>();
  const next = new Map<K, Promise<V>>();
  const start = (key: K): Promise<V> => {
    const query = load(key);
    running.set(key, query);
    const done = () => {
      if (running.get(key) === query) running.delete(key);
    };
    query.then(done, done);
    return query;
  };
  return (key: K) => {
    const waiting = next.get(key);
    if (waiting) return waiting;
    const current = running.get(key);
    if (!current) return start(key);
    const settled = () => {
      next.delete(key);
      return start(key);
    };
    const queued = current.then(settled, settled);
    next.set(key, queued);
    return queued;
  };
}

/**
 * Wraps `run`, which does many calls' work at once (one statement, one commit, one Redis
 * transaction), so that concurrent calls share it: a call made while fewer than `concurrency`
 * batches run (default 1) starts one of its own at once; calls made while that many run wait
 * for one to end and go together in the next (at most `maxBatch` a batch). `run` answers the inputs in order, or throws for all of them
 * having done none (one statement, or work that is safe to repeat): then each input of a
 * failed batch is run again alone, so one bad input fails only its own call.
 * Under load this is group commit: one round trip and one commit for many requests; alone, a
 * call waits for nothing.
 */
export function groupCalls<I, O>(
  run: (inputs: I[]) => Promise<O[]>,
  opts: { maxBatch?: number; concurrency?: number } = {},
): (input: I) => Promise<O> {
  const maxBatch = opts.maxBatch ?? 64;
  const concurrency = opts.concurrency ?? 1;
  type Waiting = { input: I; resolve: (output: O) => void; reject: (error: unknown) => void };
  const queue: Waiting[] = [];
  let running = 0;
  const next = () => {
    if (queue.length === 0) return;
    running += 1;
    const batch = queue.splice(0, maxBatch);
    const settle = (outputs: O[], group: Waiting[]) => {
      for (const [i, w] of group.entries()) w.resolve(outputs[i]);
    };
    run(batch.map((w) => w.input))
      .then(
        (outputs) => settle(outputs, batch),
        // One input must not fail the others: each goes again alone and gets its own answer.
        async (error: unknown) => {
          if (batch.length === 1) return batch[0].reject(error);
          await Promise.all(
            batch.map((w) => run([w.input]).then((outputs) => settle(outputs, [w]), w.reject)),
          );
        },
      )
      .finally(() => {
        running -= 1;
        next();
      });
  };
  return (input: I) =>
    new Promise<O>((resolve, reject) => {
      queue.push({ input, resolve, reject });
      if (running < concurrency) next();
    });
}

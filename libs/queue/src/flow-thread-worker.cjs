// The thread behind FlowThread (flow-thread.ts): a BullMQ FlowProducer on a Redis connection of
// its own. Each message is a batch of flows; the answer says whether all are in Redis. Plain
// JavaScript, so that it starts as it is wherever the api runs (sources under tsx, or bundles).
"use strict";
const { parentPort, workerData } = require("node:worker_threads");
const { FlowProducer } = require("bullmq");
const { Redis } = require("ioredis");

// No offline queue, as the api's own connection: a flow sent while Redis is lost fails at once
// (the dispatcher retries it) instead of being added whenever Redis comes back.
const connection = new Redis(workerData.redisUrl, {
  maxRetriesPerRequest: null,
  enableOfflineQueue: false,
});
connection.on("error", () => {}); // a lost connection fails the adds, which say so
const flow = new FlowProducer({ connection, prefix: workerData.prefix });
flow.on("error", () => {});

async function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

parentPort.on("message", async (message) => {
  if (message.type === "close") {
    await flow.close().catch(() => {});
    connection.disconnect();
    parentPort.postMessage({ type: "closed" });
    return;
  }
  const { id, flows, timeoutMs } = message;
  try {
    await withTimeout(flow.waitUntilReady(), timeoutMs, `Redis not ready within ${timeoutMs} ms`);
    await withTimeout(flow.addBulk(flows), timeoutMs, "Redis timed out");
    parentPort.postMessage({ type: "added", id });
  } catch (error) {
    const text = error instanceof Error ? error.message : String(error);
    parentPort.postMessage({ type: "failed", id, message: text });
  }
});

// The real PPO processor in a worker: PPO alone from an earlier run's SFT and reward checkpoints,
// and a worker killed mid-stage whose successor resumes actor, critic, EMA, both optimizers and
// the RNG from one checkpoint, ending with the same weights as an uninterrupted stage.
import type { PpoHyperparameters } from "@chatrl/contracts";
import { createRun, getRun, latestCheckpointSet, listMetrics, saveCheckpoint } from "@chatrl/db";
import { GPT, MODEL_PRESETS, saveModel, ValueModel } from "@chatrl/engine";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startWorker } from "../src/worker.ts";
import {
  createHarness,
  eventMessages,
  exited,
  FAST_TIMING,
  type Harness,
  spawnWorkerProcess,
  waitForStage,
  waitUntil,
} from "./harness.ts";

const quiet = pino({ level: "silent" });
let h: Harness;
let parents: { sft: string; reward: string };

beforeAll(async () => {
  h = await createHarness();
  // An earlier run's final SFT and reward checkpoints.
  const prisma = h.tdb.db.prisma;
  const earlier = await createRun(prisma, {
    name: "parents",
    spec: {},
    stages: [
      { kind: "sft", maxSteps: 1 },
      { kind: "reward", maxSteps: 1 },
    ],
  });
  const [sftStage, rewardStage] = earlier.stages;
  const sft = await saveCheckpoint(prisma, {
    runId: earlier.id,
    stageId: sftStage.id,
    step: 1,
    role: "sft",
    final: true,
    config: MODEL_PRESETS.tiny,
    model: await saveModel(new GPT(MODEL_PRESETS.tiny, 3), "sft"),
  });
  const reward = await saveCheckpoint(prisma, {
    runId: earlier.id,
    stageId: rewardStage.id,
    step: 1,
    role: "reward",
    final: true,
    config: MODEL_PRESETS.tiny,
    model: await saveModel(ValueModel.fresh(MODEL_PRESETS.tiny, 4), "reward"),
  });
  parents = { sft: sft.id, reward: reward.id };
});

afterAll(async () => {
  await h?.close();
});

const PPO: Partial<PpoHyperparameters> = {
  max_steps: 8,
  checkpoint_every: 3,
  per_device_generation_batch_size: 4,
  per_device_training_batch_size: 2,
  max_prompt_seq_len: 32,
  max_answer_seq_len: 8,
  actor_learning_rate: 1e-3,
  critic_learning_rate: 1e-3,
  num_warmup_steps: 1,
  enable_ema: true,
  unsup_coef: 0.5,
};

function submitPpo(extra: Partial<PpoHyperparameters> = {}) {
  return h.submitRun({
    kinds: ["ppo"],
    datasetStages: ["ppo"],
    ppo: {
      ...PPO,
      sft_checkpoint_id: parents.sft,
      reward_checkpoint_id: parents.reward,
      ...extra,
    },
  });
}

async function withPpoWorker<T>(fn: () => Promise<T>): Promise<T> {
  const w = await startWorker(
    { ...h.config, queues: ["ppo"] },
    { db: h.tdb.db, connection: h.connection, logger: quiet },
    FAST_TIMING,
  );
  try {
    return await fn();
  } finally {
    await w.close();
  }
}

/** sha256 of each final file of the stage, by role. */
async function finalFiles(stageId: string): Promise<Record<string, string>> {
  const set = await latestCheckpointSet(h.tdb.db.prisma, stageId);
  expect(set?.final).toBe(true);
  return Object.fromEntries((set?.checkpoints ?? []).map((c) => [c.role, c.sha256]));
}

/**
 * A PPO stage run straight through, then again with its worker killed after the checkpoint at
 * step 3 and finished by another: both end with the same files.
 */
async function trainsAndResumes(extra: Partial<PpoHyperparameters> = {}) {
  // Uninterrupted.
  const straight = await submitPpo(extra);
  const expected = await withPpoWorker(async () => {
    const stage = await waitForStage(h, straight.stageId, "succeeded", 60_000);
    expect(stage).toMatchObject({ step: 8, maxSteps: 8, progress: 1 });
    expect(Object.keys(stage.summary).sort()).toEqual(["kl", "reward_score"]);
    return finalFiles(straight.stageId);
  });
  expect(Object.keys(expected).sort()).toEqual(["actor", "critic", "ema"]);
  const run = await getRun(h.tdb.db.prisma, straight.runId);
  expect(run?.status).toBe("succeeded");
  const klPoints = await listMetrics(h.tdb.db.prisma, straight.runId, {
    stage: "ppo",
    name: "kl",
  });
  expect(klPoints.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);

  // Killed after its checkpoint at step 3, then finished by another worker.
  const { runId, stageId } = await submitPpo(extra);
  const child = spawnWorkerProcess(h, { env: { CHATRL_QUEUES: "ppo" } });
  try {
    await waitUntil(
      async () => {
        const set = await latestCheckpointSet(h.tdb.db.prisma, stageId);
        return set && set.step >= 3 ? set : undefined;
      },
      60_000,
      "the checkpoint at step 3",
    );
  } finally {
    child.kill("SIGKILL");
  }
  await exited(child);
  const resumed = await withPpoWorker(async () => {
    await waitForStage(h, stageId, "succeeded", 60_000);
    return finalFiles(stageId);
  });
  expect(await eventMessages(h, runId)).toContainEqual(
    expect.stringMatching(/^ppo resumed from step [36]$/),
  );
  expect(resumed).toEqual(expected);
  return { runId: straight.runId };
}

describe("a PPO stage in a worker", () => {
  it("trains from earlier checkpoints, logs every step, and a killed worker's successor ends with the same weights", async () => {
    await trainsAndResumes();
  });

  it("trains LoRA adapters of actor and critic alone and resumes them exactly after a kill", async () => {
    const { runId } = await trainsAndResumes({
      actor_lora_dim: 4,
      critic_lora_dim: 2,
      critic_lora_module_name: "mlp.",
      only_optimize_lora: true,
      actor_lora_learning_rate: 1e-2,
    });
    const started = (await eventMessages(h, runId)).find((m) => m.startsWith("ppo started"));
    expect(started).toContain('actor LoRA rank 4 on 8 projections matching "h."');
    expect(started).toContain('critic LoRA rank 2 on 4 projections matching "mlp."');
  });
});

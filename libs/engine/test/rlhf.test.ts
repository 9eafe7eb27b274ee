// The reward model, PPO's pieces and the hybrid engine on the tiny model.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ByteTokenizer,
  GPT,
  HybridEngine,
  loadModel,
  loadValueModel,
  MODEL_PRESETS,
  makeExperience,
  type PpoConfig,
  PPOTrainer,
  type PreferencePair,
  type RewardConfig,
  RewardModelTrainer,
  renderChatPrompt,
  Rng,
  rolloutSampling,
  sampleTokens,
  saveModel,
  tf,
  tokenLogprobs,
  V_HEAD,
  ValueModel,
} from "../src/index";
import { fusedKernelsActive } from "../src/kernels/index.ts";
import { useTestBackend } from "./support";

const tokenizer = new ByteTokenizer();
const config = { ...MODEL_PRESETS.tiny, contextLength: 64 };
const chat = (content: string) => renderChatPrompt([{ role: "user", content }]);

beforeAll(async () => {
  await useTestBackend();
});

const PAIRS: PreferencePair[] = Array.from({ length: 24 }, (_, i) => ({
  prompt: chat(`${i % 6}+${i % 4}`),
  chosen: `Sure! ${(i % 6) + (i % 4)}`,
  rejected: `No. ${(i % 6) + (i % 4)}`,
}));

describe("a value model", () => {
  it("gives a value per token and scores a sequence at its last real token", () => {
    const model = ValueModel.fresh(config, 1);
    const ids = tf.tensor2d(
      [
        [1, 2, 3, 4],
        [5, 6, tokenizer.padId, tokenizer.padId],
      ],
      [2, 4],
      "int32",
    );
    const values = model.values(ids).arraySync() as number[][];
    const scores = model.scores(ids, [3, 1]).arraySync() as number[];
    expect(scores[0]).toBeCloseTo(values[0][3], 6);
    expect(scores[1]).toBeCloseTo(values[1][1], 6);
    model.dispose();
  });

  it("has v_head gradients that finite differences agree with", () => {
    const model = ValueModel.fresh(config, 2);
    const ids = tf.tensor2d([[3, 1, 4, 1, 5]], [1, 5], "int32");
    const weights = tf.tensor2d([[0.3, -1, 0.5, 2, -0.7]]);
    const f = () => tf.sum(tf.mul(model.values(ids), weights)) as tf.Scalar;
    const { grads } = tf.variableGrads(f, [model.vHead]);
    const grad = grads[model.vHead.name].dataSync();
    const head = model.vHead.arraySync()[0];
    const h = 1e-2;
    for (const k of [0, 7, 63]) {
      const at = (delta: number) => {
        const moved = [...head];
        moved[k] += delta;
        model.vHead.assign(tf.tensor2d([moved]));
        const out = f().dataSync()[0];
        model.vHead.assign(tf.tensor2d([head]));
        return out;
      };
      expect(grad[k], `d / d v_head[${k}]`).toBeCloseTo((at(h) - at(-h)) / (2 * h), 2);
    }
    model.dispose();
  });

  it("saves v_head.weight with its role, and a policy loader refuses it naming both roles", async () => {
    const model = ValueModel.fresh(config, 3);
    const bytes = await saveModel(model, "reward");
    await expect(loadModel(bytes, "sft")).rejects.toThrow(
      /"reward" model .* expected a policy \(sft\)/,
    );
    await expect(saveModel(model, "actor")).rejects.toThrow(/value model as role "actor"/);
    const back = await loadValueModel(bytes);
    const ids = tf.tensor2d([[7, 8, 9]], [1, 3], "int32");
    expect(Array.from(back.values(ids).dataSync())).toEqual(
      Array.from(model.values(ids).dataSync()),
    );
    expect(back.namedWeights().has(V_HEAD)).toBe(true);
    // From a policy file: the body's weights and a fresh head.
    const policy = new GPT(config, 4);
    const fromPolicy = await loadValueModel(await saveModel(policy, "sft"), 5);
    const h1 = Array.from(policy.hidden(ids).dataSync());
    expect(Array.from(fromPolicy.body.hidden(ids).dataSync())).toEqual(h1);
    for (const m of [model, back, policy, fromPolicy]) m.dispose();
  });
});

const REWARD: RewardConfig = {
  maxSteps: 40,
  epochs: 1,
  batchSize: 4,
  learningRate: 1e-3,
  maxSeqLen: 48,
  warmupSteps: 2,
  weightDecay: 0,
  gradClip: 1,
  seed: 1,
  evalFraction: 0.25,
  evalEvery: 20,
};

describe("RewardModelTrainer", () => {
  it("learns which answer is preferred on pairs it never trained on", async () => {
    const model = ValueModel.fresh(config, 6);
    const trainer = new RewardModelTrainer(model, tokenizer, PAIRS, REWARD);
    expect(trainer.evalPairs).toBe(6);
    expect(trainer.trainPairs).toBe(18);
    const before = trainer.evaluate();
    const tensors = tf.memory().numTensors;
    let last: Record<string, number> = {};
    while (trainer.step < trainer.totalSteps) last = (await trainer.trainStep()).metrics;
    expect(tf.memory().numTensors).toBe(tensors);
    expect(last.eval_accuracy).toBe(1);
    expect(last.eval_chosen_score).toBeGreaterThan(last.eval_rejected_score);
    expect(before.accuracy).toBeLessThan(1);
    expect(trainer.summary()).toMatchObject({ accuracy: 1 });
    trainer.dispose();
    model.dispose();
  });
});

describe("RewardModelTrainer with LoRA", () => {
  it("trains the adapters and the value head alone with only_optimize_lora", async () => {
    const model = ValueModel.fresh(config, 6);
    const base = new Map([...model.body.namedWeights()].map(([n, w]) => [n, w.dataSync().slice()]));
    const head = model.vHead.dataSync().slice();
    const trainer = new RewardModelTrainer(model, tokenizer, PAIRS, {
      ...REWARD,
      maxSteps: 20,
      lora: { dim: 4, moduleName: "h.", onlyOptimize: true, learningRate: 1e-2 },
    });
    let last: Record<string, number> = {};
    while (trainer.step < trainer.totalSteps) last = (await trainer.trainStep()).metrics;
    expect(last.eval_accuracy).toBe(1);
    for (const [name, w] of model.body.namedWeights())
      expect(Array.from(w.dataSync()), name).toEqual(Array.from(base.get(name) as Float32Array));
    expect(model.vHead.dataSync()).not.toEqual(head);
    const left = model.body.loraWeights().get("h.0.attn.c_attn.lora_left_weight") as tf.Variable;
    expect(tf.tidy(() => tf.max(tf.abs(left)).dataSync()[0])).toBeGreaterThan(0);
    trainer.dispose();
    model.dispose();
  });
});

const PPO: PpoConfig = {
  maxSteps: 3,
  epochs: 1,
  generationBatchSize: 4,
  trainingBatchSize: 2,
  ppoEpochs: 2,
  maxPromptSeqLen: 32,
  maxAnswerSeqLen: 12,
  actorLearningRate: 1e-3,
  criticLearningRate: 1e-3,
  actorWeightDecay: 0,
  criticWeightDecay: 0,
  warmupSteps: 1,
  klCtl: 0.1,
  clipRewardValue: 5,
  cliprange: 0.2,
  cliprangeValue: 0.2,
  gamma: 1,
  lam: 0.95,
  temperature: 1,
  topP: 1,
  enableEma: true,
  emaBeta: 0.9,
  unsupCoef: 0.5,
  gradClip: 1,
  seed: 3,
};

async function fourModels() {
  const sft = await saveModel(new GPT(config, 7), "sft");
  const reward = await saveModel(ValueModel.fresh(config, 8), "reward");
  return {
    actor: await loadModel(sft),
    reference: await loadModel(sft),
    ema: await loadModel(sft),
    critic: await loadValueModel(reward),
    reward: await loadValueModel(reward),
  };
}

/**
 * A PPO trainer's checkpoint now (its state and the actor, critic and EMA files), its next step,
 * and that step again from a trainer built on the checkpoint (`build`), as a resumed stage does.
 */
async function resumeNextStep(
  straight: Awaited<ReturnType<typeof fourModels>>,
  trainer: PPOTrainer,
  build: (models: Awaited<ReturnType<typeof fourModels>>) => PPOTrainer,
) {
  const state = await trainer.exportState();
  const files = {
    actor: await saveModel(straight.actor, "actor"),
    critic: await saveModel(straight.critic, "critic"),
    ema: await saveModel(straight.ema, "ema"),
  };
  const expected = await trainer.trainStep();
  const resumedModels = {
    actor: await loadModel(files.actor),
    reference: await loadModel(await saveModel(straight.reference, "sft")),
    ema: await loadModel(files.ema),
    critic: await loadValueModel(files.critic),
    reward: await loadValueModel(await saveModel(straight.reward, "reward")),
  };
  const resumed = build(resumedModels);
  await resumed.importState(state);
  const got = await resumed.trainStep();
  return { expected, got, resumed, resumedModels };
}

describe("PPO", () => {
  let models: Awaited<ReturnType<typeof fourModels>>;
  const prompts = ["1+1", "2+3", "4+4", "0+5", "3+3"].map(chat);

  beforeAll(async () => {
    models = await fourModels();
  });
  afterAll(() => {
    for (const m of Object.values(models)) m.dispose();
  });

  it("ends rollouts at the eos and at every role token, so an answer cannot forge a turn", () => {
    const sampling = rolloutSampling(PPO, tokenizer, 0);
    const { system, user, assistant, endOfTurn } = tokenizer.chatTokens ?? {};
    expect(sampling.eosId).toBe(tokenizer.eosId);
    expect([...(sampling.endIds ?? [])].sort()).toEqual(
      [system, user, assistant, endOfTurn].sort(),
    );
    expect(sampling.padId).toBe(tokenizer.padId);
  });

  it("samples rollouts on the serving decode path as sampleTokens does, and drops its decode copies after", async () => {
    expect(fusedKernelsActive()).toBe(true);
    const hybrid = new HybridEngine(models.actor);
    const ids = prompts.slice(0, 3).map((p) => tokenizer.encode(p));
    const sampling = { ...rolloutSampling(PPO, tokenizer, 7), maxNewTokens: 12 };
    for (const temperature of [0, 1]) {
      const opts = { ...sampling, temperature };
      const served = await hybrid.generate(ids, opts);
      expect(models.actor.decodeDtype).toBeNull(); // training mode again: the copies are gone
      const reference = await sampleTokens(models.actor, ids, opts);
      // The same streams and stops; float16 keys and values move the logits by ~1e-3, which
      // these draws do not notice.
      expect(served.map((r) => [r.tokens, r.finish])).toEqual(
        reference.map((r) => [r.tokens, r.finish]),
      );
    }
    expect(hybrid.switches).toEqual({ toInference: 2, toTraining: 2 });
  });

  it("makes a rollout whose KL is zero when the actor is the reference, and whose first-epoch ratio is 1", async () => {
    const hybrid = new HybridEngine(models.actor);
    const ids = prompts.slice(0, 3).map((p) => tokenizer.encode(p));
    const rollout = await makeExperience(
      { hybrid, reference: models.reference, critic: models.critic, reward: models.reward },
      ids,
      {
        sample: {
          maxNewTokens: 10,
          temperature: 1,
          topP: 1,
          seed: 1,
          eosId: tokenizer.eosId,
          padId: tokenizer.padId,
        },
        klCtl: 0.1,
        clipRewardValue: 5,
        gamma: 1,
        lam: 0.95,
        rng: Rng.create(1),
      },
    );
    expect(hybrid.mode).toBe("training");
    expect(hybrid.switches).toEqual({ toInference: 1, toTraining: 1 });
    expect(Math.abs(rollout.stats.kl)).toBeLessThan(1e-5);
    const actions = rollout.mask.reduce((a, b) => a + b, 0);
    expect(actions).toBe(rollout.answers.reduce((n, a) => n + a.length, 0));
    // The training forward again, on the same weights: ratio exp(new - old) is 1.
    const newLogp = tf.tidy(() =>
      tokenLogprobs(
        hybrid.trainingLogits(
          tf.tensor2d(rollout.ids, [rollout.batch, rollout.length], "int32"),
          Rng.create(2),
        ),
        rollout.targets,
      ).dataSync(),
    );
    let worst = 0;
    rollout.mask.forEach((m, i) => {
      if (m) worst = Math.max(worst, Math.abs(Math.exp(newLogp[i] - rollout.oldLogp[i]) - 1));
    });
    expect(worst).toBeLessThan(1e-5);
  });

  it("trains actor and critic without leaking tensors, updates the EMA and resumes exactly", async () => {
    const ptx = [{ prompt: chat("hi"), response: "hello" }];
    const straight = await fourModels();
    const trainer = new PPOTrainer(straight, tokenizer, prompts, ptx, PPO);
    expect(trainer.totalSteps).toBe(3);
    const emaBefore = straight.ema
      .namedWeights()
      .get("h.0.attn.c_attn.weight")
      ?.dataSync()
      .slice(0, 4);
    const first = await trainer.trainStep(); // warm caches before counting tensors
    const tensors = tf.memory().numTensors;
    const second = await trainer.trainStep();
    expect(tf.memory().numTensors).toBe(tensors);
    for (const name of [
      "reward_score",
      "kl",
      "actor_loss",
      "critic_loss",
      "clip_frac",
      "ptx_loss",
      "answer_len",
      "entropy",
      "actor_lr",
      "critic_lr",
    ]) {
      expect(Number.isFinite(first.metrics[name]), name).toBe(true);
    }
    expect(Object.keys(second.phases ?? {})).toEqual(["generation", "scoring", "training"]);
    const emaAfter = straight.ema
      .namedWeights()
      .get("h.0.attn.c_attn.weight")
      ?.dataSync()
      .slice(0, 4);
    expect(emaAfter).not.toEqual(emaBefore);

    // Resume from after step 2: the same third step as the uninterrupted trainer.
    const { expected, got, resumed, resumedModels } = await resumeNextStep(
      straight,
      trainer,
      (m) => new PPOTrainer(m, tokenizer, prompts, ptx, PPO),
    );
    expect(resumed.step).toBe(3);
    expect(got.metrics.reward_score).toBeCloseTo(expected.metrics.reward_score, 5);
    expect(got.metrics.actor_loss).toBeCloseTo(expected.metrics.actor_loss, 5);
    expect(resumed.summary().kl).toBeCloseTo(trainer.summary().kl, 5);
    for (const t of [trainer, resumed]) t.dispose();
    for (const m of [...Object.values(straight), ...Object.values(resumedModels)]) m.dispose();
  });

  it("trains LoRA adapters alone (only_optimize_lora) for actor and critic, the EMA following the merged actor, and resumes exactly", async () => {
    const lora = { dim: 4, moduleName: "h.", onlyOptimize: true, learningRate: 1e-2 };
    const config: PpoConfig = { ...PPO, unsupCoef: 0, actorLora: lora, criticLora: lora };
    const straight = await fourModels();
    const snapshot = (weights: Map<string, tf.Variable>) =>
      new Map([...weights].map(([n, w]) => [n, w.dataSync().slice()]));
    const actorBase = snapshot(straight.actor.namedWeights());
    const criticBase = snapshot(straight.critic.body.namedWeights());
    const head = straight.critic.vHead.dataSync().slice();
    const ema = straight.ema.namedWeights().get("h.0.mlp.c_fc.weight")?.dataSync().slice();
    const trainer = new PPOTrainer(straight, tokenizer, prompts, [], config);
    await trainer.trainStep();
    const tensors = tf.memory().numTensors;
    await trainer.trainStep();
    expect(tf.memory().numTensors).toBe(tensors);
    for (const [model, base] of [
      [straight.actor, actorBase],
      [straight.critic.body, criticBase],
    ] as const) {
      expect(model.loraMerged).toBe(false);
      for (const [name, w] of model.namedWeights())
        expect(Array.from(w.dataSync()), name).toEqual(Array.from(base.get(name) as Float32Array));
      const left = model.loraWeights().get("h.1.attn.c_proj.lora_left_weight") as tf.Variable;
      expect(tf.tidy(() => tf.max(tf.abs(left)).dataSync()[0])).toBeGreaterThan(0);
    }
    expect(straight.critic.vHead.dataSync()).not.toEqual(head);
    expect(straight.ema.namedWeights().get("h.0.mlp.c_fc.weight")?.dataSync()).not.toEqual(ema);

    const { expected, got, resumed, resumedModels } = await resumeNextStep(
      straight,
      trainer,
      (m) => new PPOTrainer(m, tokenizer, prompts, [], config),
    );
    expect(got.metrics.reward_score).toBeCloseTo(expected.metrics.reward_score, 5);
    expect(got.metrics.actor_loss).toBeCloseTo(expected.metrics.actor_loss, 5);
    expect(got.metrics.critic_loss).toBeCloseTo(expected.metrics.critic_loss, 5);
    for (const t of [trainer, resumed]) t.dispose();
    for (const m of [...Object.values(straight), ...Object.values(resumedModels)]) m.dispose();
  });

  it("refuses prompt and answer lengths that do not fit the actor's context", async () => {
    expect(
      () =>
        new PPOTrainer(models, tokenizer, prompts, [], {
          ...PPO,
          maxPromptSeqLen: 40,
          maxAnswerSeqLen: 40,
        }),
    ).toThrow(/exceeds the actor's context length 64/);
  });
});

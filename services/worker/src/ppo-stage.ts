// The PPO stage (DeepSpeed-Chat step 3): prompts (and pretraining rows) routed to it; the actor
// and frozen reference from the SFT model, the critic and frozen reward model from the reward
// model (this run's final checkpoints, or the ones stages.ppo names); the PPOTrainer. A
// checkpoint holds actor, critic and (with enable_ema) EMA files plus one trainer state.
import type { PpoHyperparameters, RunSpec, StageKind } from "@chatrl/contracts";
import { type CheckpointRole, getRun, latestCheckpointSet } from "@chatrl/db";
import {
  loadModel,
  loadValueModel,
  type PpoConfig,
  PPOTrainer,
  rowToPpoPrompt,
  rowToPretrainingExamples,
  saveModel,
  tokenizerFor,
} from "@chatrl/engine";
import { UnrecoverableError } from "bullmq";
import { loadStageRows, loraNote, loraTraining, readModelFile } from "./stage-inputs.ts";
import type { StageProcessor } from "./stage-loop.ts";
import type { Prisma } from "./types.ts";

export function ppoSettings(spec: RunSpec): PpoHyperparameters {
  const ppo = spec.stages.ppo;
  if (!ppo) throw new UnrecoverableError("the run spec has no stages.ppo settings");
  return ppo;
}

export function ppoConfig(spec: RunSpec): PpoConfig {
  const p = ppoSettings(spec);
  return {
    maxSteps: p.max_steps,
    epochs: p.epochs,
    generationBatchSize: p.per_device_generation_batch_size,
    trainingBatchSize: p.per_device_training_batch_size,
    ppoEpochs: p.ppo_epochs,
    maxPromptSeqLen: p.max_prompt_seq_len,
    maxAnswerSeqLen: p.max_answer_seq_len,
    actorLearningRate: p.actor_learning_rate,
    criticLearningRate: p.critic_learning_rate,
    actorWeightDecay: p.actor_weight_decay,
    criticWeightDecay: p.critic_weight_decay,
    warmupSteps: p.num_warmup_steps,
    klCtl: p.kl_ctl,
    clipRewardValue: p.clip_reward_value,
    cliprange: p.cliprange,
    cliprangeValue: p.cliprange_value,
    gamma: p.gamma,
    lam: p.lam,
    temperature: p.temperature,
    topP: p.top_p,
    enableEma: p.enable_ema,
    emaBeta: p.ema_beta,
    unsupCoef: p.unsup_coef,
    adaptiveKl: p.adaptive_kl,
    gradClip: p.grad_clip,
    seed: spec.seed,
    actorLora: loraTraining(
      p.actor_lora_dim,
      p.actor_lora_module_name,
      p.only_optimize_lora,
      p.actor_lora_learning_rate,
    ),
    criticLora: loraTraining(
      p.critic_lora_dim,
      p.critic_lora_module_name,
      p.only_optimize_lora,
      p.critic_lora_learning_rate,
    ),
  };
}

/**
 * The model file PPO starts from for `kind`: the named checkpoint, or the final checkpoint of
 * this run's stage of that kind (which the BullMQ flow made finish before PPO started).
 */
async function parentFile(
  prisma: Prisma,
  spec: RunSpec,
  runId: string,
  kind: "sft" | "reward",
): Promise<Uint8Array> {
  const named =
    kind === "sft" ? ppoSettings(spec).sft_checkpoint_id : ppoSettings(spec).reward_checkpoint_id;
  let checkpointId = named;
  if (!checkpointId) {
    const run = await getRun(prisma, runId);
    const stage = run?.stages.find((s) => s.kind === (kind as StageKind));
    const set = stage && (await latestCheckpointSet(prisma, stage.id));
    const role: CheckpointRole = kind;
    const file = set?.final ? set.checkpoints.find((c) => c.role === role) : undefined;
    if (!file) {
      throw new UnrecoverableError(
        `ppo needs the ${kind} stage's final checkpoint, and run ${runId} has none ` +
          `(${stage ? `the ${kind} stage is ${stage.status}` : `no ${kind} stage`})`,
      );
    }
    checkpointId = file.id;
  }
  return readModelFile(prisma, checkpointId);
}

export const ppoProcessor: StageProcessor = {
  async open(ctx, spec, stage, resume) {
    const settings = ppoSettings(spec);
    const rows = await loadStageRows(ctx.prisma, spec, "ppo");
    const prompts = rows.map(rowToPpoPrompt);
    if (prompts.length === 0) {
      throw new UnrecoverableError(
        "the ppo stage has no prompts: route a dataset to it (datasets[].stages) and give it a share of data_split",
      );
    }
    const pretraining = settings.unsup_coef > 0 ? rows.flatMap(rowToPretrainingExamples) : [];
    const sftBytes = await parentFile(ctx.prisma, spec, stage.runId, "sft");
    const rewardBytes = await parentFile(ctx.prisma, spec, stage.runId, "reward");

    const owned: { dispose(): void }[] = [];
    const own = <T extends { dispose(): void }>(m: T): T => {
      owned.push(m);
      return m;
    };
    try {
      const models = {
        actor: own(await loadModel(resume ? resume.file("actor") : sftBytes)),
        reference: own(await loadModel(sftBytes)),
        critic: own(await loadValueModel(resume ? resume.file("critic") : rewardBytes)),
        reward: own(await loadValueModel(rewardBytes)),
        ema: settings.enable_ema
          ? own(await loadModel(resume ? resume.file("ema") : sftBytes))
          : undefined,
      };
      // Actor and reward model must read the same ids: one tokenizer for the rollout and scores.
      const tokenizer = tokenizerFor(models.actor.config);
      const rewardTokenizer = models.reward.body.config.tokenizer ?? "byte-v1";
      if (rewardTokenizer !== tokenizer.version) {
        throw new UnrecoverableError(
          `the SFT model reads tokenizer ${tokenizer.version} but the reward model ${rewardTokenizer}; ` +
            "train both from models with the same tokenizer",
        );
      }
      const trainer = new PPOTrainer(models, tokenizer, prompts, pretraining, ppoConfig(spec));
      owned.push(trainer);
      return {
        trainer,
        checkpointEvery: settings.checkpoint_every,
        reportEvery: 1, // every PPO step: a run you cannot diagnose from its curves is not done
        dataStats: { truncated: trainer.truncated, dropped: trainer.dropped },
        describe: () =>
          `ppo started on ${ctx.device}: ${prompts.length - trainer.dropped} prompts` +
          `${pretraining.length > 0 ? `, ${pretraining.length} pretraining examples` : ""}, ` +
          `${trainer.totalSteps} steps of ${settings.per_device_generation_batch_size} rollouts, ` +
          `actor ${models.actor.parameterCount()} and critic ${models.critic.parameterCount()} parameters` +
          loraNote(models.actor, ppoConfig(spec).actorLora).replace("; LoRA", "; actor LoRA") +
          loraNote(models.critic.body, ppoConfig(spec).criticLora).replace(
            "; LoRA",
            "; critic LoRA",
          ),
        checkpointFiles: async () => [
          {
            role: "actor",
            config: models.actor.config,
            model: await saveModel(models.actor, "actor"),
          },
          {
            role: "critic",
            config: models.critic.config,
            model: await saveModel(models.critic, "critic"),
          },
          ...(models.ema
            ? [
                {
                  role: "ema" as const,
                  config: models.ema.config,
                  model: await saveModel(models.ema, "ema"),
                },
              ]
            : []),
        ],
        summary: () => trainer.summary(),
        dispose() {
          for (const m of owned.reverse()) m.dispose();
        },
      };
    } catch (err) {
      for (const m of owned.reverse()) m.dispose();
      throw err instanceof UnrecoverableError
        ? err
        : new UnrecoverableError(err instanceof Error ? err.message : String(err));
    }
  },
};

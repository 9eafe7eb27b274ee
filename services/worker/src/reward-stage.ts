// The reward-model stage (DeepSpeed-Chat step 2): the preference pairs routed to it, a value
// model started from `stages.reward.model` or the run's model, and the RewardModelTrainer. The
// stage loop (stage-loop.ts) does the rest.
import type { RewardHyperparameters, RunSpec } from "@chatrl/contracts";
import {
  loadValueModel,
  MODEL_PRESETS,
  type RewardConfig,
  RewardModelTrainer,
  rowToPreferencePairs,
  saveModel,
  tokenizerFor,
  ValueModel,
} from "@chatrl/engine";
import { UnrecoverableError } from "bullmq";
import { loadStageRows, loraNote, loraTraining, readModelFile } from "./stage-inputs.ts";
import type { StageProcessor } from "./stage-loop.ts";
import type { Prisma } from "./types.ts";

export function rewardSettings(spec: RunSpec): RewardHyperparameters {
  const reward = spec.stages.reward;
  if (!reward) throw new UnrecoverableError("the run spec has no stages.reward settings");
  return reward;
}

export function rewardConfig(spec: RunSpec): RewardConfig {
  const r = rewardSettings(spec);
  return {
    maxSteps: r.max_steps,
    epochs: r.epochs,
    batchSize: r.batch_size,
    learningRate: r.learning_rate,
    maxSeqLen: r.max_seq_len,
    warmupSteps: r.warmup_steps,
    weightDecay: r.weight_decay,
    gradClip: r.grad_clip,
    seed: spec.seed,
    evalFraction: r.eval_fraction,
    evalEvery: r.eval_every,
    lora: loraTraining(r.lora_dim, r.lora_module_name, r.only_optimize_lora, r.lora_learning_rate),
  };
}

/** The reward model's start: its own model setting, else the run's; a policy file gets a fresh head. */
async function loadRewardStart(prisma: Prisma, spec: RunSpec): Promise<ValueModel> {
  const source = rewardSettings(spec).model ?? spec.model;
  if ("preset" in source) {
    const config = MODEL_PRESETS[source.preset];
    if (!config) throw new UnrecoverableError(`unknown model preset "${source.preset}"`);
    return ValueModel.fresh(config, spec.seed);
  }
  return loadValueModel(await readModelFile(prisma, source.checkpoint_id), spec.seed);
}

export const rewardProcessor: StageProcessor = {
  async open(ctx, spec, _stage, resume) {
    const settings = rewardSettings(spec);
    const rows = await loadStageRows(ctx.prisma, spec, "reward");
    const pairs = rows.flatMap(rowToPreferencePairs);
    if (pairs.length === 0) {
      throw new UnrecoverableError(
        "the reward stage has no preference pairs: route a dataset of {prompt, chosen, rejected} " +
          "rows to it (datasets[].stages) and give it a share of data_split",
      );
    }
    const model = resume
      ? await loadValueModel(resume.file("reward"))
      : await loadRewardStart(ctx.prisma, spec);
    let trainer: RewardModelTrainer;
    try {
      trainer = new RewardModelTrainer(
        model,
        tokenizerFor(model.body.config),
        pairs,
        rewardConfig(spec),
      );
    } catch (err) {
      model.dispose();
      throw new UnrecoverableError(err instanceof Error ? err.message : String(err));
    }
    return {
      trainer,
      checkpointEvery: settings.checkpoint_every,
      reportEvery: Math.max(1, Math.floor(settings.checkpoint_every / 5)),
      dataStats: { truncated: trainer.truncated, dropped: trainer.dropped },
      describe: () =>
        `reward started on ${ctx.device}: ${trainer.trainPairs} pairs to train on, ` +
        `${trainer.evalPairs} held out, ${trainer.totalSteps} steps, ${model.parameterCount()} parameters` +
        loraNote(model.body, rewardConfig(spec).lora),
      checkpointFiles: async () => [
        { role: "reward", config: model.config, model: await saveModel(model, "reward") },
      ],
      summary: () => trainer.summary(),
      dispose() {
        trainer.dispose();
        model.dispose();
      },
    };
  },
};

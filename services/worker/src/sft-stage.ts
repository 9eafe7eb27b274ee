// The SFT stage (DeepSpeed-Chat step 1): its examples, the model it starts from and the trainer.
// The stage loop (stage-loop.ts) does the rest: steps, checkpoints, progress, resume.
import { loadModel, SFTTrainer, saveModel, tokenizerFor } from "@chatrl/engine";
import { loadSftExamples, sftConfig, sftSettings } from "./sft-inputs.ts";
import { loadBaseModel, loraNote } from "./stage-inputs.ts";
import type { StageProcessor } from "./stage-loop.ts";

export const sftProcessor: StageProcessor = {
  async open(ctx, spec, _stage, resume) {
    const { checkpoint_every: checkpointEvery } = sftSettings(spec);
    const examples = await loadSftExamples(ctx.prisma, spec);
    const model = resume
      ? await loadModel(resume.file("sft"), "sft")
      : await loadBaseModel(ctx.prisma, spec);
    let trainer: SFTTrainer;
    try {
      // The tokenizer the model was trained with (a base checkpoint may predate the chat tokens).
      trainer = new SFTTrainer(model, tokenizerFor(model.config), examples, sftConfig(spec));
    } catch (err) {
      model.dispose();
      throw err;
    }
    return {
      trainer,
      checkpointEvery,
      // Five metric points per checkpoint interval: enough for a loss curve, few rows.
      reportEvery: Math.max(1, Math.floor(checkpointEvery / 5)),
      dataStats: { truncated: trainer.truncated, dropped: trainer.dropped },
      describe: () =>
        `sft started on ${ctx.device}: ${examples.length} examples, ` +
        `${trainer.totalSteps} steps, ${model.parameterCount()} parameters` +
        loraNote(model, sftConfig(spec).lora),
      checkpointFiles: async () => [
        { role: "sft", config: model.config, model: await saveModel(model, "sft") },
      ],
      dispose() {
        trainer.dispose();
        model.dispose();
      },
    };
  },
};

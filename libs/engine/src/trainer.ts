// What the worker's stage loop needs from any trainer (SFT, reward model, PPO): take a step,
// say what it measured, and save or restore everything needed to continue exactly.

/** One optimizer step's report. */
export type StepReport = {
  /** Steps done, counting this one. */
  step: number;
  /** Real (non-pad) tokens processed in this step (read, and for PPO also generated). */
  tokens: number;
  /** Named scalars to log (loss, lr, reward_score, kl ...). */
  metrics: Record<string, number>;
  /** Seconds of this step by phase, when the trainer has phases (PPO: generation, scoring, training). */
  phases?: Record<string, number>;
};

export interface StageTrainer {
  /** Steps done. */
  readonly step: number;
  /** Steps the stage takes in all. */
  readonly totalSteps: number;
  /** One step; every tensor it makes is released. */
  trainStep(): Promise<StepReport>;
  /** Optimizer moments, step, RNG and anything else a resumed trainer needs besides the weights. */
  exportState(): Promise<Uint8Array>;
  /** Continues from exportState() bytes. */
  importState(bytes: Uint8Array): Promise<void>;
  /** Releases what the trainer owns (not the models it was given). */
  dispose(): void;
}

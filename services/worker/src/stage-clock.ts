// What a stage has cost so far. A stage may run in several attempts (a worker dies, another
// resumes from the last checkpoint); each attempt starts from the totals the stage row already
// holds, so time and money spent on work that was later redone still count: they were paid for.
import { performance } from "node:perf_hooks";

export type StageTotals = { wallSeconds: number; deviceSeconds: number; tokens: number };

export type StageCost = StageTotals & { costUsd: number };

export class StageClock {
  private readonly attemptStart = performance.now();
  private deviceSeconds = 0;
  private tokens = 0;

  constructor(
    private readonly before: StageTotals,
    private readonly pricePerHour: number,
  ) {}

  /**
   * Runs one piece of device work, synchronous or not (PPO's generation is asynchronous),
   * counting the seconds until it settles as device time.
   */
  async timeDevice<T>(work: () => Promise<T> | T): Promise<{ result: T; seconds: number }> {
    const start = performance.now();
    const result = await work();
    const seconds = (performance.now() - start) / 1000;
    this.deviceSeconds += seconds;
    return { result, seconds };
  }

  addTokens(n: number): void {
    this.tokens += n;
  }

  totals(): StageCost {
    const deviceSeconds = this.before.deviceSeconds + this.deviceSeconds;
    return {
      wallSeconds: this.before.wallSeconds + (performance.now() - this.attemptStart) / 1000,
      deviceSeconds,
      tokens: this.before.tokens + this.tokens,
      // Billed per device-hour, as cloud accelerators are.
      costUsd: (this.pricePerHour * deviceSeconds) / 3600,
    };
  }
}

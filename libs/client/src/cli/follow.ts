// `runs follow`: polls the run until it finishes, with a progress bar per stage and the latest
// value of the metrics that tell whether it learns: the training loss, the reward model's
// held-out accuracy, and PPO's mean reward score and KL to the reference. On a terminal the
// bars redraw in place; otherwise (logs, CI) one line is printed whenever a stage's status,
// step or metrics change.
import { setTimeout as sleep } from "node:timers/promises";
import { MultiBar, Presets, type SingleBar } from "cli-progress";
import type { ChatrlClient, Run, StageKind } from "../client.ts";
import type { CliContext } from "./context.ts";
import { formatDuration } from "./format.ts";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

type Stage = Run["stages"][number];

/** The metrics shown, by the name the worker logs them under, in the order shown. */
export const FOLLOWED_METRICS = [
  { name: "loss", label: "loss" }, // every stage (the ppo stage logs actor_loss instead)
  { name: "eval_accuracy", label: "eval acc" }, // reward: pairs ranked right, held out
  { name: "reward_score", label: "reward" }, // ppo: mean reward model score of the rollouts
  { name: "kl", label: "kl" }, // ppo: KL of the actor to the reference
] as const;

type StageMetrics = Map<string, number>;

/** The latest point of each followed metric, by stage. */
async function latestMetrics(
  client: ChatrlClient,
  runId: string,
): Promise<Map<StageKind, StageMetrics>> {
  const lists = await Promise.all(
    FOLLOWED_METRICS.map(({ name }) => client.listRunMetrics(runId, { name })),
  );
  const latest = new Map<StageKind, Map<string, { step: number; value: number }>>();
  for (const list of lists) {
    for (const point of list.data) {
      const byName = latest.get(point.stage) ?? new Map();
      latest.set(point.stage, byName);
      const seen = byName.get(point.name);
      if (!seen || point.step >= seen.step) byName.set(point.name, point);
    }
  }
  return new Map(
    [...latest].map(([stage, byName]) => [
      stage,
      new Map([...byName].map(([name, point]) => [name, point.value])),
    ]),
  );
}

/** "loss 0.1234 eval acc 0.8750", in FOLLOWED_METRICS order; "" when none is logged yet. */
function metricsText(metrics: StageMetrics | undefined): string {
  return FOLLOWED_METRICS.filter(({ name }) => metrics?.has(name))
    .map(({ name, label }) => `${label} ${metrics?.get(name)?.toFixed(4)}`)
    .join(" ");
}

function stageLine(stage: Stage, metrics: StageMetrics | undefined): string {
  const text = metricsText(metrics);
  return `${stage.kind}: ${stage.status} step ${stage.step}/${stage.max_steps}${text ? ` ${text}` : ""}`;
}

/** Follows a run to its end; returns the exit code (0 only when the run succeeded). */
export async function followRun(
  ctx: CliContext,
  runId: string,
  opts: { intervalMs: number },
): Promise<number> {
  const client = ctx.api();
  const bars = ctx.io.stderr.isTTY
    ? new MultiBar(
        {
          stream: ctx.io.stderr,
          format: "{stage} |{bar}| {value}/{total} steps  {status}  {metrics}",
          barsize: 30,
          hideCursor: true,
          clearOnComplete: false,
        },
        Presets.shades_classic,
      )
    : null;
  const barOf = new Map<string, SingleBar>();
  const printed = new Map<string, string>();
  let lastSteps = "";
  let metrics = new Map<StageKind, StageMetrics>();

  try {
    for (;;) {
      const run = await client.getRun(runId);
      // Metrics only change with a step or a stage's end (its final evaluation); skip the
      // queries otherwise.
      const steps = run.stages.map((s) => `${s.step}:${s.status}`).join(",");
      if (steps !== lastSteps) {
        metrics = await latestMetrics(client, runId);
        lastSteps = steps;
      }
      for (const stage of run.stages) {
        const values = metrics.get(stage.kind);
        if (bars) {
          const payload = {
            stage: stage.kind.padEnd(6),
            status: stage.status.padEnd(9),
            metrics: metricsText(values),
          };
          const bar = barOf.get(stage.id) ?? bars.create(stage.max_steps, 0, payload);
          barOf.set(stage.id, bar);
          bar.setTotal(stage.max_steps);
          bar.update(stage.step, payload);
        } else {
          const line = stageLine(stage, values);
          if (printed.get(stage.id) !== line) ctx.print(line);
          printed.set(stage.id, line);
        }
      }
      if (FINISHED.has(run.status)) {
        bars?.stop();
        return reportEnd(ctx, run);
      }
      await sleep(opts.intervalMs);
    }
  } finally {
    bars?.stop();
  }
}

function reportEnd(ctx: CliContext, run: Run): number {
  const seconds = run.stages.reduce((sum, s) => sum + s.wall_seconds, 0);
  const cost = run.stages.reduce((sum, s) => sum + s.cost_usd, 0);
  if (run.status === "succeeded") {
    const model = run.fine_tuned_model;
    ctx.print(
      `run ${run.id} succeeded in ${formatDuration(seconds)} ($${cost.toFixed(4)}); chat with: chatrl chat --model ${model}`,
    );
    return 0;
  }
  const reason = run.error ?? run.stages.find((s) => s.error)?.error;
  ctx.io.stderr.write(`error: run ${run.id} ${run.status}${reason ? `: ${reason}` : ""}\n`);
  return run.status === "cancelled" ? 3 : 2;
}

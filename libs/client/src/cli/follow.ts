// `runs follow`: polls the run until it finishes, with a progress bar per stage and the
// latest training loss. On a terminal the bars redraw in place; otherwise (logs, CI) one line
// is printed whenever a stage's status or step changes.
import { setTimeout as sleep } from "node:timers/promises";
import { MultiBar, Presets, type SingleBar } from "cli-progress";
import type { ChatrlClient, Run, StageKind } from "../client.ts";
import type { CliContext } from "./context.ts";
import { formatDuration } from "./format.ts";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

type Stage = Run["stages"][number];

async function latestLosses(client: ChatrlClient, runId: string): Promise<Map<StageKind, number>> {
  const metrics = await client.listRunMetrics(runId, { name: "loss" });
  const latest = new Map<StageKind, { step: number; value: number }>();
  for (const point of metrics.data) {
    const seen = latest.get(point.stage);
    if (!seen || point.step >= seen.step) latest.set(point.stage, point);
  }
  return new Map([...latest].map(([stage, point]) => [stage, point.value]));
}

function stageLine(stage: Stage, loss: number | undefined): string {
  const lossText = loss === undefined ? "" : ` loss ${loss.toFixed(4)}`;
  return `${stage.kind}: ${stage.status} step ${stage.step}/${stage.max_steps}${lossText}`;
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
          format: "{stage} |{bar}| {value}/{total} steps  {status}  loss {loss}",
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
  let losses = new Map<StageKind, number>();

  try {
    for (;;) {
      const run = await client.getRun(runId);
      // Metrics only change when a step does; skip the query otherwise.
      const steps = run.stages.map((s) => s.step).join(",");
      if (steps !== lastSteps) {
        losses = await latestLosses(client, runId);
        lastSteps = steps;
      }
      for (const stage of run.stages) {
        const loss = losses.get(stage.kind);
        if (bars) {
          const payload = {
            stage: stage.kind.padEnd(6),
            status: stage.status.padEnd(9),
            loss: loss === undefined ? "-" : loss.toFixed(4),
          };
          const bar = barOf.get(stage.id) ?? bars.create(stage.max_steps, 0, payload);
          barOf.set(stage.id, bar);
          bar.setTotal(stage.max_steps);
          bar.update(stage.step, payload);
        } else {
          const line = stageLine(stage, loss);
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

// One run: its stages (progress, status, error), the curves of its metrics by step or time, the
// time split and cost, the events log and the checkpoints; cancel from here.
import { download, get, HttpError, post, query } from "./api.js";
import { ChartGroup, lineChart } from "./charts.js";
import {
  badge,
  bytes,
  duration,
  elapsed,
  FINAL,
  h,
  number,
  progressBar,
  usd,
  when,
} from "./dom.js";

/** The curves a practitioner reads first, per stage; other metrics follow one chart each. */
const CURVES = {
  sft: [
    { title: "loss", names: ["loss"] },
    { title: "learning rate", names: ["lr"] },
    { title: "gradient norm", names: ["grad_norm"] },
    { title: "tokens/s", names: ["tokens_per_s"] },
  ],
  reward: [
    { title: "loss", names: ["loss"] },
    { title: "accuracy", names: ["accuracy", "eval_accuracy"] },
    { title: "held-out scores", names: ["eval_chosen_score", "eval_rejected_score"] },
    { title: "learning rate", names: ["lr"] },
    { title: "gradient norm", names: ["grad_norm"] },
    { title: "tokens/s", names: ["tokens_per_s"] },
  ],
  ppo: [
    { title: "reward score", names: ["reward_score"] },
    { title: "KL to the SFT model", names: ["kl"] },
    { title: "actor and critic loss", names: ["actor_loss", "critic_loss"] },
    { title: "clip fraction", names: ["clip_frac"] },
    { title: "answer length", names: ["answer_len"] },
    { title: "entropy", names: ["entropy"] },
    { title: "value and return", names: ["value_mean", "return_mean"] },
    { title: "pretraining loss", names: ["ptx_loss"] },
    { title: "KL coefficient", names: ["kl_ctl"] },
    { title: "learning rates", names: ["actor_lr", "critic_lr"] },
    {
      title: "seconds per step",
      names: ["time_generation_s", "time_scoring_s", "time_training_s"],
    },
    { title: "tokens/s", names: ["tokens_per_s"] },
  ],
};
const STAGE_TITLES = { sft: "Supervised fine-tuning", reward: "Reward model", ppo: "PPO" };
const METRICS_EVERY_MS = 10_000;

export function runView(root, params, { id }) {
  let xAxis = params.get("x") === "time" ? "time" : "step";
  let metricsAt = 0;
  let metricsKey = "";
  let lastStatus = "";
  const groups = [];

  const head = h("section", { class: "run-head" });
  const stages = h("section", { class: "stage-cards" });
  const timing = h("section", { class: "timing" });
  const axisToggle = h(
    "select",
    { id: "x-axis", "aria-label": "x axis" },
    h("option", { value: "step", selected: xAxis === "step" }, "x: step"),
    h("option", { value: "time", selected: xAxis === "time" }, "x: time"),
  );
  axisToggle.addEventListener("change", () => {
    xAxis = axisToggle.value;
    metricsKey = "";
    loadMetrics().catch(showError);
  });
  const curves = h("div", { id: "curves" });
  const events = h("tbody", { id: "events" });
  const checkpoints = h("tbody", { id: "checkpoints" });
  const errorLine = h("p", { class: "error" });
  const showError = (e) => {
    errorLine.textContent = e.message;
  };

  root.replaceChildren(
    h("p", {}, h("a", { href: "#/runs" }, "← runs")),
    head,
    stages,
    h(
      "section",
      {},
      h("div", { class: "toolbar" }, h("h2", {}, "Curves"), axisToggle),
      h("p", { class: "muted" }, "Drag across a chart to zoom; double-click to zoom out."),
      curves,
    ),
    h("section", {}, h("h2", {}, "Time and cost"), timing),
    h(
      "section",
      { class: "split" },
      h(
        "div",
        {},
        h("h2", {}, "Events"),
        h(
          "table",
          { class: "events" },
          h(
            "thead",
            {},
            h("tr", {}, h("th", {}, "time"), h("th", {}, "level"), h("th", {}, "message")),
          ),
          events,
        ),
      ),
      h(
        "div",
        {},
        h("h2", {}, "Checkpoints"),
        h(
          "table",
          { class: "checkpoints" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["step", "role", "final", "size", "sha256", "saved", ""].map((c) => h("th", {}, c)),
            ),
          ),
          checkpoints,
        ),
      ),
    ),
    errorLine,
  );

  async function load() {
    const run = await get(`/v1/runs/${encodeURIComponent(id)}`);
    renderHead(run);
    renderStages(run);
    const [time, eventPage, checkpointList] = await Promise.all([
      get(`/v1/runs/${encodeURIComponent(id)}/timing`),
      get(`/v1/runs/${encodeURIComponent(id)}/events${query({ limit: 200 })}`),
      get(`/v1/runs/${encodeURIComponent(id)}/checkpoints`),
    ]);
    renderTiming(time);
    renderEvents(eventPage.data);
    renderCheckpoints(checkpointList.data);
    // Metrics are the heavy read: every 10 s while the run trains, once more when it ends.
    const statusChanged = run.status !== lastStatus;
    lastStatus = run.status;
    if (statusChanged || (!FINAL.has(run.status) && Date.now() - metricsAt > METRICS_EVERY_MS)) {
      await loadMetrics();
    }
    return run;
  }

  async function loadMetrics() {
    metricsAt = Date.now();
    const list = await get(`/v1/runs/${encodeURIComponent(id)}/metrics`);
    const key = `${xAxis}:${list.data.length}`;
    if (key === metricsKey) return;
    metricsKey = key;
    renderCurves(list.data);
  }

  function renderHead(run) {
    const cost = run.stages.reduce((sum, s) => sum + s.cost_usd, 0);
    const cancel = h("button", { type: "button", id: "cancel", class: "danger" }, "Cancel run");
    cancel.hidden = FINAL.has(run.status);
    cancel.addEventListener("click", async () => {
      if (!confirm(`Cancel run "${run.name}"? Stages in progress stop at their next step.`)) return;
      cancel.disabled = true;
      try {
        const after = await post(`/v1/runs/${encodeURIComponent(run.id)}/cancel`);
        renderHead(after);
        renderStages(after);
      } catch (e) {
        showError(e);
        cancel.disabled = false;
      }
    });
    head.replaceChildren(
      h(
        "div",
        { class: "toolbar" },
        h("h1", { id: "run-name" }, run.name),
        badge(run.status),
        cancel,
      ),
      h(
        "dl",
        { class: "facts" },
        fact("id", run.id),
        fact("created", when(run.created_at)),
        fact("started", when(run.started_at)),
        fact("finished", when(run.finished_at)),
        fact("wall", duration(elapsed(run.started_at, run.finished_at))),
        fact("cost", usd(cost)),
        fact("chat with", run.fine_tuned_model ?? "– (once it has succeeded)"),
      ),
      ...(run.error ? [h("p", { class: "error" }, run.error)] : []),
      ...(run.warnings.length
        ? [
            h(
              "ul",
              { class: "warnings" },
              run.warnings.map((w) => h("li", {}, w)),
            ),
          ]
        : []),
    );
  }

  function renderStages(run) {
    stages.replaceChildren(
      ...run.stages.map((s) =>
        h(
          "article",
          { class: "stage", "data-stage": s.kind },
          h("h3", {}, STAGE_TITLES[s.kind] ?? s.kind, " ", badge(s.status)),
          progressBar(s.progress, `step ${s.step} / ${s.max_steps}`, s.status),
          h(
            "dl",
            { class: "facts" },
            fact("started", when(s.started_at)),
            fact("finished", when(s.finished_at)),
            fact("wall", duration(s.wall_seconds)),
            fact("device", duration(s.device_seconds)),
            fact("tokens", s.tokens.toLocaleString()),
            fact("cost", usd(s.cost_usd)),
            s.examples_truncated ? fact("examples cut", s.examples_truncated) : null,
            s.examples_dropped ? fact("examples dropped", s.examples_dropped) : null,
            Object.entries(s.summary).map(([k, v]) => fact(k.replaceAll("_", " "), number(v))),
          ),
          s.error ? h("p", { class: "error" }, s.error) : null,
        ),
      ),
    );
  }

  function renderTiming(time) {
    const rows = time.stages.map((s) => {
      const queued =
        s.queue_wait_seconds ??
        (s.ready_at !== null && s.status === "queued" ? Date.now() / 1000 - s.ready_at : null);
      return { ...s, queued };
    });
    const longest = Math.max(1e-9, ...rows.map((s) => (s.queued ?? 0) + s.wall_seconds));
    const table = h(
      "table",
      { class: "timing-table" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          [
            "stage",
            "queued",
            "running (wall)",
            "device",
            "tokens",
            "tokens/s",
            "cost",
            "split",
          ].map((c) => h("th", {}, c)),
        ),
      ),
      h(
        "tbody",
        {},
        rows.map((s) =>
          h(
            "tr",
            { "data-stage": s.kind },
            h("td", {}, s.kind),
            h("td", { class: "num" }, duration(s.queued)),
            h("td", { class: "num" }, duration(s.wall_seconds)),
            h("td", { class: "num" }, duration(s.device_seconds)),
            h("td", { class: "num" }, s.tokens.toLocaleString()),
            h("td", { class: "num" }, number(s.tokens_per_s, 3)),
            h("td", { class: "num" }, usd(s.cost_usd)),
            h(
              "td",
              { class: "split-bar" },
              stack(
                [
                  ["queued", s.queued ?? 0],
                  ["running", s.wall_seconds],
                ],
                longest,
              ),
            ),
          ),
        ),
      ),
    );
    const ppo = rows.find((s) => Object.keys(s.phase_seconds).length > 0);
    let phases = null;
    if (ppo) {
      const order = ["generation", "scoring", "training"];
      const rank = (name) => (order.includes(name) ? order.indexOf(name) : order.length);
      const parts = Object.entries(ppo.phase_seconds).sort(([a], [b]) => rank(a) - rank(b));
      const measured = parts.reduce((sum, [, v]) => sum + v, 0);
      const other = Math.max(0, ppo.wall_seconds - measured);
      const all = [...parts, ["other", other]];
      phases = h(
        "div",
        { class: "phases" },
        h("h3", {}, `${ppo.kind} step time, summed over ${ppo.step} steps`),
        stack(all, Math.max(1e-9, measured + other)),
        h(
          "ul",
          { class: "legend" },
          all.map(([name, v]) =>
            h("li", {}, h("span", { class: `key part-${name}` }), `${name} ${duration(v)}`),
          ),
        ),
      );
    }
    timing.replaceChildren(table, phases ?? "");
  }

  function renderEvents(list) {
    events.replaceChildren(
      ...list.map((e) =>
        h(
          "tr",
          { class: `level-${e.level}` },
          h("td", {}, when(e.created_at)),
          h("td", {}, e.level),
          h("td", { class: "message" }, e.message),
        ),
      ),
    );
    if (list.length === 0)
      events.append(h("tr", {}, h("td", { colspan: 3, class: "muted" }, "no events")));
  }

  function renderCheckpoints(list) {
    checkpoints.replaceChildren(
      ...list.map((c) => {
        const path = `/v1/checkpoints/${encodeURIComponent(c.id)}/content`;
        const link = h("a", { href: path, class: "download" }, "download");
        link.addEventListener("click", (event) => {
          event.preventDefault();
          download(path, `${c.run_id}-${c.role}-step${c.step}.safetensors`).catch(showError);
        });
        return h(
          "tr",
          {},
          h("td", { class: "num" }, c.step),
          h("td", {}, c.role),
          h("td", {}, c.final ? "final" : ""),
          h("td", { class: "num" }, bytes(c.bytes)),
          h("td", { class: "id", title: c.sha256 }, c.sha256.slice(0, 12)),
          h("td", {}, when(c.created_at)),
          h("td", {}, link),
        );
      }),
    );
    if (list.length === 0) {
      checkpoints.append(
        h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no checkpoints yet")),
      );
    }
  }

  function renderCurves(metrics) {
    for (const g of groups.splice(0)) g.destroy();
    const byStage = new Map();
    for (const m of metrics) {
      if (!byStage.has(m.stage)) byStage.set(m.stage, new Map());
      const names = byStage.get(m.stage);
      if (!names.has(m.name)) names.set(m.name, []);
      names.get(m.name).push([xAxis === "time" ? m.time : m.step, m.value]);
    }
    const sections = [];
    for (const kind of ["sft", "reward", "ppo"]) {
      const names = byStage.get(kind);
      if (!names) continue;
      const section = h(
        "div",
        { class: "curves", "data-stage": kind },
        h("h3", {}, STAGE_TITLES[kind]),
      );
      const grid = h("div", { class: "chart-grid" });
      section.append(grid);
      sections.push(section);
      curves.replaceChildren(...sections); // in the page before drawing, so charts get a width
      const group = new ChartGroup();
      groups.push(group);
      const planned = CURVES[kind] ?? [];
      const used = new Set(planned.flatMap((c) => c.names));
      const charts = [
        ...planned,
        ...[...names.keys()].filter((n) => !used.has(n)).map((n) => ({ title: n, names: [n] })),
      ];
      for (const chart of charts) {
        const series = chart.names
          .filter((n) => names.has(n))
          .map((n) => ({ label: n, points: names.get(n) }));
        if (series.length === 0) continue;
        lineChart(grid, { title: chart.title, series, time: xAxis === "time", group });
      }
    }
    if (sections.length === 0)
      curves.replaceChildren(h("p", { class: "muted" }, "No metrics yet."));
  }

  return {
    load,
    interval: 3000,
    destroy() {
      for (const g of groups.splice(0)) g.destroy();
    },
    /** A run that does not exist stops the polling with a plain message. */
    fatal: (e) => e instanceof HttpError && e.status === 404,
  };
}

function fact(term, value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}

/** A horizontal bar split into named parts, `total` wide. */
function stack(parts, total) {
  return h(
    "div",
    { class: "stack" },
    parts.map(([name, value]) => {
      const part = h("div", { class: `part part-${name}`, title: `${name} ${duration(value)}` });
      part.style.width = `${(100 * Math.max(0, value)) / total}%`;
      return part;
    }),
  );
}

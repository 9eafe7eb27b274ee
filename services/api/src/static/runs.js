// The runs list: status, a progress bar per stage, times, wall time, cost and the model to chat
// with; filtered by status; refreshed every few seconds by the page.
import { get, query } from "./api.js";
import { badge, duration, elapsed, h, progressBar, usd, when } from "./dom.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];
const PAGE = 50;

export function runsView(root, params, { navigate }) {
  const status = params.get("status") ?? "";
  let limit = Number(params.get("limit")) || PAGE;

  const filter = h(
    "select",
    { id: "status-filter", "aria-label": "status" },
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s || "all")),
  );
  filter.addEventListener("change", () => navigate(`#/runs${query({ status: filter.value })}`));
  const tbody = h("tbody", { id: "runs" });
  const more = h("button", { type: "button", hidden: true }, "show more");
  more.addEventListener("click", () => {
    limit += PAGE;
    load();
  });
  const empty = h("p", { class: "muted", hidden: true }, "No runs yet.");
  root.replaceChildren(
    h("div", { class: "toolbar" }, h("h1", {}, "Runs"), h("label", {}, "status ", filter)),
    h(
      "table",
      { class: "runs" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          [
            "run",
            "status",
            "stages",
            "created",
            "started",
            "finished",
            "wall",
            "cost",
            "model",
          ].map((c) => h("th", {}, c)),
        ),
      ),
      tbody,
    ),
    empty,
    more,
  );

  async function load() {
    const page = await get(`/v1/runs${query({ limit, status })}`);
    tbody.replaceChildren(...page.data.map(runRow));
    empty.hidden = page.data.length > 0;
    if (status) empty.textContent = `No ${status} runs.`;
    more.hidden = !page.has_more;
  }
  return { load, interval: 3000 };
}

function runRow(run) {
  const cost = run.stages.reduce((sum, s) => sum + s.cost_usd, 0);
  const link = h(
    "a",
    { href: `#/runs/${encodeURIComponent(run.id)}`, class: "run-name" },
    run.name,
  );
  return h(
    "tr",
    { "data-run": run.id },
    h("td", {}, link, h("div", { class: "id" }, run.id)),
    h("td", {}, badge(run.status)),
    h(
      "td",
      { class: "stages" },
      run.stages.map((s) =>
        progressBar(s.progress, `${s.kind} ${Math.round(s.progress * 100)}%`, s.status),
      ),
    ),
    h("td", {}, when(run.created_at)),
    h("td", {}, when(run.started_at)),
    h("td", {}, when(run.finished_at)),
    h("td", { class: "num" }, duration(elapsed(run.started_at, run.finished_at))),
    h("td", { class: "num" }, usd(cost)),
    h("td", { class: "model" }, run.fine_tuned_model ?? "–"),
  );
}

// Costs and time: sums by day, run or stage kind over a date range, a chart of cost and device
// hours per day, and where the time went (queue wait, device, PPO phases).
import { get, query } from "./api.js";
import { dayBars } from "./charts.js";
import { duration, h, number, usd } from "./dom.js";

const GROUPS = ["day", "run", "stage"];

export function costsView(root, params, { navigate }) {
  const groupBy = GROUPS.includes(params.get("group_by")) ? params.get("group_by") : "day";
  const from = params.get("from") ?? "";
  const to = params.get("to") ?? "";

  const groupSelect = h(
    "select",
    { id: "group-by", "aria-label": "group by" },
    GROUPS.map((g) => h("option", { value: g, selected: g === groupBy }, g)),
  );
  const fromInput = h("input", { id: "from", type: "date", value: from, "aria-label": "from" });
  const toInput = h("input", { id: "to", type: "date", value: to, "aria-label": "to" });
  const apply = () =>
    navigate(
      `#/costs${query({ group_by: groupSelect.value, from: fromInput.value, to: toInput.value })}`,
    );
  for (const input of [groupSelect, fromInput, toInput]) input.addEventListener("change", apply);

  const charts = h("div", { class: "chart-grid", id: "cost-charts" });
  const costRows = h("tbody", { id: "rows" });
  const costTotal = h("tfoot", { id: "total" });
  const timeRows = h("tbody", { id: "time-rows" });
  root.replaceChildren(
    h(
      "div",
      { class: "toolbar" },
      h("h1", {}, "Time and cost"),
      h("label", {}, "group by ", groupSelect),
      h("label", {}, "from ", fromInput),
      h("label", {}, "to ", toInput),
    ),
    charts,
    h("h2", {}, "Cost"),
    h(
      "table",
      { class: "costs" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          [groupBy, "runs", "stages", "wall", "device", "tokens", "cost", ""].map((c) =>
            h("th", {}, c),
          ),
        ),
      ),
      costRows,
      costTotal,
    ),
    h("h2", {}, "Where the time went"),
    h(
      "table",
      { class: "costs" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          [
            groupBy,
            "queue wait",
            "wall",
            "device",
            "tokens/s",
            "PPO generation",
            "scoring",
            "training",
          ].map((c) => h("th", {}, c)),
        ),
      ),
      timeRows,
    ),
  );

  let drawnKey = "";
  async function load() {
    const range = { from, to };
    const [costs, days, time] = await Promise.all([
      get(`/v1/dashboard/costs${query({ group_by: groupBy, ...range })}`),
      groupBy === "day" ? null : get(`/v1/dashboard/costs${query({ group_by: "day", ...range })}`),
      get(`/v1/dashboard/time${query({ group_by: groupBy, ...range })}`),
    ]);
    const perDay = (days ?? costs).data;
    const key = JSON.stringify(perDay);
    if (key !== drawnKey) {
      drawnKey = key;
      charts.replaceChildren();
      dayBars(charts, {
        title: "cost per day (USD)",
        label: "cost",
        days: perDay.map((r) => ({ day: r.key, value: r.cost_usd })),
        format: (v) => `$${v.toFixed(v >= 1 ? 2 : 4)}`,
      });
      dayBars(charts, {
        title: "device hours per day",
        label: "device hours",
        days: perDay.map((r) => ({ day: r.key, value: r.device_seconds / 3600 })),
        color: "#2f9d5a",
        format: (v) => v.toFixed(v >= 10 ? 1 : 3),
      });
    }

    const most = Math.max(...costs.data.map((r) => r.cost_usd), 1e-12);
    costRows.replaceChildren(
      ...costs.data.map((r) => {
        const fill = h("div", { class: "bar-fill" });
        fill.style.width = `${(100 * r.cost_usd) / most}%`;
        return h(
          "tr",
          {},
          h("td", {}, keyCell(groupBy, r.key)),
          h("td", { class: "num" }, r.runs),
          h("td", { class: "num" }, r.stages),
          h("td", { class: "num" }, duration(r.wall_seconds)),
          h("td", { class: "num" }, duration(r.device_seconds)),
          h("td", { class: "num" }, r.tokens.toLocaleString()),
          h("td", { class: "num" }, usd(r.cost_usd)),
          h("td", { class: "bar" }, fill),
        );
      }),
    );
    if (costs.data.length === 0) {
      costRows.append(
        h("tr", {}, h("td", { colspan: 8, class: "muted" }, "nothing has run in this range")),
      );
    }
    const t = costs.total;
    costTotal.replaceChildren(
      h(
        "tr",
        {},
        h("td", {}, "total"),
        h("td", {}),
        h("td", {}),
        h("td", { class: "num" }, duration(t.wall_seconds)),
        h("td", { class: "num" }, duration(t.device_seconds)),
        h("td", { class: "num" }, t.tokens.toLocaleString()),
        h("td", { class: "num" }, usd(t.cost_usd)),
        h("td", {}),
      ),
    );
    timeRows.replaceChildren(
      ...time.data.map((r) =>
        h(
          "tr",
          {},
          h("td", {}, keyCell(groupBy, r.key)),
          h("td", { class: "num" }, duration(r.queue_wait_seconds)),
          h("td", { class: "num" }, duration(r.wall_seconds)),
          h("td", { class: "num" }, duration(r.device_seconds)),
          h("td", { class: "num" }, number(r.tokens_per_s, 3)),
          h("td", { class: "num" }, phase(r, "generation")),
          h("td", { class: "num" }, phase(r, "scoring")),
          h("td", { class: "num" }, phase(r, "training")),
        ),
      ),
    );
  }
  return { load, interval: 15000 };
}

function phase(row, name) {
  return name in row.phase_seconds ? duration(row.phase_seconds[name]) : "–";
}

function keyCell(groupBy, key) {
  return groupBy === "run" ? h("a", { href: `#/runs/${encodeURIComponent(key)}` }, key) : key;
}

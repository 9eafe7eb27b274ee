// Charts drawn by uPlot (served from the api's node_modules as /dashboard/assets/uplot.min.js):
// small, and fast on tens of thousands of points. Drag across a chart to zoom its x axis (the
// other charts of the group follow), double-click to zoom back out.
import { h } from "./dom.js";

const COLORS = ["#2f6fd0", "#d0562f", "#2f9d5a", "#8a4fc4", "#c49a1f", "#1f9cb0"];

/** A y tick: small magnitudes (learning rates) in exponent form, others as they read. */
function tick(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a < 0.01 || a >= 1e6) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/** Charts that share an x range: zooming one zooms the others. */
export class ChartGroup {
  constructor() {
    this.charts = new Set();
    this.syncing = false;
    this.key = `group-${Math.random().toString(36).slice(2)}`;
  }

  zoomed(source) {
    if (this.syncing) return;
    this.syncing = true;
    const { min, max } = source.scales.x;
    for (const chart of this.charts) if (chart !== source) chart.setScale("x", { min, max });
    this.syncing = false;
  }

  destroy() {
    for (const chart of this.charts) chart.destroy();
    this.charts.clear();
  }
}

/**
 * Aligns series of [x, y] points on the union of their x values (uPlot's data layout), with
 * null where a series has no point (an eval metric logged every 25 steps).
 */
export function align(series) {
  const xs = [...new Set(series.flatMap((s) => s.points.map(([x]) => x)))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const columns = series.map((s) => {
    const column = new Array(xs.length).fill(null);
    for (const [x, y] of s.points) column[index.get(x)] = y;
    return column;
  });
  return [xs, ...columns];
}

/**
 * A line chart in `parent`: `series` is [{ label, points: [[x, y], ...] }]; `time` makes the x
 * axis a time axis (x in unix seconds). Returns the uPlot instance (or null with no points).
 */
export function lineChart(parent, { title, series, time = false, group, logY = false }) {
  const shown = series.filter((s) => s.points.length > 0);
  const points = shown.reduce((n, s) => n + s.points.length, 0);
  const box = h("div", { class: "chart", "data-title": title, "data-points": points });
  parent.append(box);
  if (points === 0) {
    box.append(h("p", { class: "muted" }, `${title}: no points yet`));
    return null;
  }
  const width = Math.max(280, Math.floor(box.getBoundingClientRect().width || 420));
  const opts = {
    title,
    width,
    height: 190,
    scales: { x: { time }, y: logY ? { distr: 3 } : {} },
    axes: [
      { stroke: "#555" },
      { stroke: "#555", size: 60, values: (_u, ticks) => ticks.map(tick) },
    ],
    cursor: {
      drag: { x: true, y: false, setScale: true },
      sync: group ? { key: group.key } : undefined,
    },
    series: [
      { label: time ? "time" : "step" },
      ...shown.map((s, i) => ({
        label: s.label,
        stroke: COLORS[i % COLORS.length],
        width: 1.5,
        spanGaps: true,
        points: { show: s.points.length < 60 },
      })),
    ],
    hooks: group ? { setScale: [(u, key) => key === "x" && group.zoomed(u)] } : {},
  };
  const chart = new window.uPlot(opts, align(shown), box);
  group?.charts.add(chart);
  return chart;
}

/** Bars of one value per day (x: the day's midnight, unix seconds). */
export function dayBars(parent, { title, label, days, color = COLORS[0], format }) {
  const box = h("div", { class: "chart wide", "data-title": title, "data-points": days.length });
  parent.append(box);
  if (days.length === 0) {
    box.append(h("p", { class: "muted" }, `${title}: nothing in this range`));
    return null;
  }
  const width = Math.max(320, Math.floor(box.getBoundingClientRect().width || 640));
  const xs = days.map((d) => Date.parse(`${d.day}T00:00:00Z`) / 1000);
  const day = 86400;
  return new window.uPlot(
    {
      title,
      width,
      height: 220,
      scales: {
        // Half a day of room on each side, so a single day is a bar, not the whole axis.
        x: { time: true, range: () => [xs[0] - day * 0.6, xs[xs.length - 1] + day * 0.6] },
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [
        {
          stroke: "#555",
          incrs: [day, 2 * day, 7 * day, 14 * day, 30 * day, 91 * day, 365 * day],
          values: (_u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(0, 10)),
          space: 80,
        },
        { stroke: "#555", size: 70, values: (_u, ticks) => ticks.map((t) => format(t)) },
      ],
      cursor: { drag: { x: true, y: false, setScale: true } },
      series: [
        {
          label: "day",
          value: (_u, v) => (v === null ? "–" : new Date(v * 1000).toISOString().slice(0, 10)),
        },
        {
          label,
          stroke: color,
          fill: `${color}99`,
          paths: window.uPlot.paths.bars({ size: [0.6, 60], align: 0 }),
          points: { show: false },
          value: (_u, v) => (v === null ? "–" : format(v)),
        },
      ],
    },
    [xs, days.map((d) => d.value)],
    box,
  );
}

// DOM and formatting helpers. Every string a user or the server wrote (run names, event
// messages, errors) goes into the page as a text node through h(), never as HTML.

/**
 * h("td", { class: "num", title: "x" }, "text", childNode, ...): an element. Children that are
 * strings or numbers become text nodes; null/undefined/false are skipped. Attributes named on*
 * are refused (listeners go through addEventListener), and so is "style" (set el.style.* instead,
 * which a Content-Security-Policy allows).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (/^on/i.test(name) || name === "style") throw new Error(`h: attribute ${name} not allowed`);
    el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Seconds as "42.0 s", "3.5 min", "1.20 h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  if (seconds >= 3600) return `${(seconds / 3600).toFixed(2)} h`;
  if (seconds >= 60) return `${(seconds / 60).toFixed(1)} min`;
  return `${seconds.toFixed(1)} s`;
}

/** Unix seconds as local "YYYY-MM-DD HH:MM:SS". */
export function when(unix) {
  if (unix === null || unix === undefined) return "–";
  const d = new Date(unix * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function usd(value) {
  return value >= 1 ? `$${value.toFixed(2)}` : `$${value.toFixed(4)}`;
}

export function bytes(n) {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

export function number(value, digits = 4) {
  if (!Number.isFinite(value)) return "–";
  if (Number.isInteger(value)) return value.toLocaleString();
  return Math.abs(value) >= 1000 ? value.toFixed(0) : value.toPrecision(digits);
}

/** A status word in a coloured badge. */
export function badge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

/** A progress bar of `fraction` (0..1) with a text label beside it. */
export function progressBar(fraction, label, status) {
  const fill = h("div", { class: `fill status-${status ?? "running"}` });
  fill.style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  return h("div", { class: "progress" }, h("div", { class: "track" }, fill), h("span", {}, label));
}

export const FINAL = new Set(["succeeded", "failed", "cancelled"]);

/** Wall time of something started at `start` and finished at `end` (or still going). */
export function elapsed(start, end) {
  if (start === null || start === undefined) return null;
  return (end ?? Date.now() / 1000) - start;
}

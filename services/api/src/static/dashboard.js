// The dashboard's entry point: a hash router over three views (#/runs, #/runs/<id>, #/costs),
// polling of the shown view every few seconds (no reload; polling rather than server-sent
// events because EventSource cannot send the bearer key), the queue line in the header, and
// the API key form that appears when the server answers 401.
import { apiKey, get, onUnauthorized, setApiKey } from "./api.js";
import { costsView } from "./costs.js";
import { h } from "./dom.js";
import { runView } from "./run.js";
import { runsView } from "./runs.js";

const $ = (id) => document.getElementById(id);
let current = null; // { view, timer }
let waitingForKey = false;

function route() {
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "runs" && parts[1]) {
    return {
      name: "run",
      make: (root) => runView(root, params, { id: decodeURIComponent(parts[1]) }),
    };
  }
  if (parts[0] === "costs")
    return { name: "costs", make: (root) => costsView(root, params, { navigate }) };
  return { name: "runs", make: (root) => runsView(root, params, { navigate }) };
}

function navigate(hash) {
  if (location.hash === hash) show();
  else location.hash = hash;
}

function show() {
  stop();
  const { name, make } = route();
  for (const a of document.querySelectorAll("nav a[data-view]")) {
    a.classList.toggle("active", a.dataset.view === (name === "run" ? "runs" : name));
  }
  const view = make($("view"));
  current = { view, timer: null };
  tick(current);
}

function stop() {
  if (!current) return;
  clearTimeout(current.timer);
  current.view.destroy?.();
  current = null;
}

async function tick(entry) {
  if (entry !== current || waitingForKey) return;
  try {
    await Promise.all([entry.view.load(), loadQueues()]);
    if (entry !== current) return;
    $("message").textContent = "";
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (entry !== current) return;
    if (error.status !== 401) $("message").textContent = error.message;
    if (entry.view.fatal?.(error)) return;
  }
  if (entry === current && !waitingForKey) {
    entry.timer = setTimeout(() => tick(entry), entry.view.interval ?? 5000);
  }
}

async function loadQueues() {
  const queues = await get("/v1/dashboard/queues").catch(() => null);
  const box = $("queues");
  if (!queues) {
    box.replaceChildren(h("span", { class: "muted" }, "queues: unavailable"));
    return;
  }
  box.replaceChildren(
    ...queues.data.map((q) =>
      h(
        "span",
        { class: "queue", "data-queue": q.queue },
        h("b", {}, q.queue),
        ` ${q.waiting} waiting · ${q.active} active`,
        q.delayed ? ` · ${q.delayed} delayed` : "",
        q.failed ? h("span", { class: "error" }, ` · ${q.failed} failed`) : "",
      ),
    ),
  );
}

onUnauthorized(() => {
  if (waitingForKey) return;
  waitingForKey = true;
  $("key-message").textContent = apiKey() ? "That key was refused." : "";
  $("key-form").hidden = false;
  $("key").focus();
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("key").value.trim());
  $("key").value = "";
  $("key-form").hidden = true;
  waitingForKey = false;
  show();
});

window.addEventListener("hashchange", show);
show();

// Where a `node --cpu-prof` profile spent its time, as text: self time by npm package (or
// workspace, or node: internals) and the functions with the most self time.
//
//   node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top 40] [--from S] [--to S]
//
// --from/--to keep the samples between those seconds after the profile started (one phase of
// a benchmark); --timeline prints the busy share of each second instead, to find the phases.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

type Node = {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
};
type Profile = { nodes: Node[]; samples: number[]; timeDeltas: number[] };

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: "string", default: "40" },
    from: { type: "string", default: "0" },
    to: { type: "string", default: "Infinity" },
    timeline: { type: "boolean", default: false },
  },
});
if (positionals.length !== 1) {
  console.error("usage: profile-summary.ts FILE.cpuprofile [--top N]");
  process.exit(2);
}
const profile = JSON.parse(readFileSync(positionals[0], "utf8")) as Profile;

const idle = new Set(
  profile.nodes.filter((n) => n.callFrame.functionName === "(idle)").map((n) => n.id),
);
if (values.timeline) {
  // Per second since the start: the share of samples not idle.
  const busy: number[] = [];
  const all: number[] = [];
  let t = 0;
  for (const [i, id] of profile.samples.entries()) {
    t += profile.timeDeltas[i] ?? 0;
    const s = Math.floor(t / 1e6);
    all[s] = (all[s] ?? 0) + (profile.timeDeltas[i] ?? 0);
    busy[s] = (busy[s] ?? 0) + (idle.has(id) ? 0 : (profile.timeDeltas[i] ?? 0));
  }
  console.log(all.map((a, s) => `${s}s ${Math.round((100 * (busy[s] ?? 0)) / a)}%`).join("  "));
  process.exit(0);
}

/** Microseconds of self time per node id, from the samples between --from and --to. */
const selfUs = new Map<number, number>();
const fromUs = Number(values.from) * 1e6;
const toUs = Number(values.to) * 1e6;
let clock = 0;
for (const [i, id] of profile.samples.entries()) {
  clock += profile.timeDeltas[i] ?? 0;
  if (clock < fromUs || clock > toUs) continue;
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
}

/** What owns a frame: an npm package, a workspace, node's internals or V8 (program, GC, idle). */
function owner(url: string, name: string): string {
  if (!url) return `(${name || "anonymous"})`;
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1];
  const workspace = /\/(libs|services|bench|scripts)\/([^/]+)\//.exec(url);
  if (workspace) return `${workspace[1]}/${workspace[2]}`;
  if (url.startsWith("node:")) return "node:internals";
  return url;
}

const byOwner = new Map<string, number>();
const byFunction = new Map<string, number>();
let total = 0;
for (const node of profile.nodes) {
  const us = selfUs.get(node.id) ?? 0;
  if (us === 0) continue;
  total += us;
  const { functionName, url, lineNumber } = node.callFrame;
  const who = owner(url, functionName);
  byOwner.set(who, (byOwner.get(who) ?? 0) + us);
  const file = url
    .replace(/^.*node_modules\//, "")
    .replace(/^file:\/\/.*\/(libs|services)\//, "$1/");
  const key = `${functionName || "(anonymous)"} ${file}:${lineNumber + 1}`;
  byFunction.set(key, (byFunction.get(key) ?? 0) + us);
}

const top = Number(values.top);
const show = (title: string, m: Map<string, number>) => {
  console.log(`\n${title} (of ${(total / 1e6).toFixed(1)} s)`);
  for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${((100 * us) / total).toFixed(1).padStart(6)} %  ${k}`);
  }
};
show("self time by owner", byOwner);
show("self time by function", byFunction);

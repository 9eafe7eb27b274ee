// The production files cannot run here (no Docker engine, no cluster), so they are checked the way
// an engine, a linter and an API server would read them: docker-compose validates the compose
// file, the Dockerfiles are parsed (dockerfile-ast) and held to the rules below, and every
// Kubernetes manifest is validated against its API schema (kubernetes-models,
// @kubernetes-models/keda). test/deploy-build.test.ts runs the build the images run.
import { execFile } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import type { StageKind } from "@chatrl/queue";
import { STAGE_QUEUES } from "@chatrl/queue";
import { DockerfileParser, type Instruction } from "dockerfile-ast";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Service } from "kubernetes-models/v1/Service";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { DEFAULT_WORKER_OPTIONS } from "../services/worker/src/options.ts";
import { ENTRY_POINTS } from "../scripts/build.ts";

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, "..");

/** `node dist/<entry>.js`, for an entry point the build produces. */
function expectBuiltCommand(command: unknown, where: string): string {
  expect(Array.isArray(command), `${where}: command is not an exec-form array`).toBe(true);
  const [node, script, ...rest] = command as string[];
  expect([node, rest.length], `${where}: ${JSON.stringify(command)}`).toEqual(["node", 0]);
  const entry = /^dist\/([a-z-]+)\.js$/.exec(script)?.[1];
  expect(entry && entry in ENTRY_POINTS, `${where}: ${script} is not built`).toBe(true);
  return entry as string;
}

/** Parses "90s", "2m", "1m30s" (compose durations) to milliseconds. */
function durationMs(text: string): number {
  let ms = 0;
  for (const [, n, unit] of text.matchAll(/(\d+)(ms|s|m|h)/g)) {
    ms += Number(n) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit as "ms" | "s" | "m" | "h"];
  }
  return ms;
}

describe("docker-compose.yml", () => {
  it("is accepted by docker-compose config", async () => {
    // Throws (non-zero exit) with docker-compose's complaint when the file is invalid.
    const { stdout } = await run("docker-compose", ["config"], { cwd: root });
    const resolved = parse(stdout);
    expect(Object.keys(resolved.services)).toEqual(
      expect.arrayContaining(["api", "inference", "migrate", "postgres", "redis", "worker"]),
    );
  });

  it("gives every long-running service a health check and starts none before migrations", async () => {
    const { services } = parse(await readFile(`${root}/docker-compose.yml`, "utf8"));
    for (const name of ["postgres", "redis", "api", "worker", "inference"]) {
      expect(services[name].healthcheck?.test, `${name} has no healthcheck`).toBeTruthy();
    }
    for (const name of ["api", "worker", "inference"]) {
      expect(services[name].depends_on.migrate.condition).toBe("service_completed_successfully");
    }
  });

  it("runs the compiled JavaScript of the images, and lets a worker hand its stage back", async () => {
    const { services } = parse(await readFile(`${root}/docker-compose.yml`, "utf8"));
    const built = Object.entries(services as Record<string, Record<string, unknown>>).filter(
      ([, s]) => s.build,
    );
    expect(built.map(([name]) => name)).toEqual(
      expect.arrayContaining(["migrate", "api", "worker", "inference"]),
    );
    for (const [name, service] of built) {
      const dockerfile = (service.build as { dockerfile: string }).dockerfile;
      expect(dockerfile, name).toMatch(/^deploy\/[\w.-]*Dockerfile$/);
      const entry =
        service.command === undefined ? undefined : expectBuiltCommand(service.command, name);
      if (name === "migrate") expect(entry).toBe("migrate");
      if (name === "worker" || name === "worker-gpu") {
        // Docker's default 10 s would SIGKILL a worker still checkpointing its stage.
        const grace = durationMs(String(service.stop_grace_period ?? "10s"));
        expect(grace, `${name} stop_grace_period`).toBeGreaterThan(
          DEFAULT_WORKER_OPTIONS.lockDurationMs,
        );
      }
    }
    // `docker compose up --scale worker=3` needs a worker without fixed ports or names.
    expect(services.worker.ports).toBeUndefined();
    expect(services.worker.container_name).toBeUndefined();
  });
});

type Stage = { from: string; name: string | null; instructions: Instruction[] };

async function dockerfileStages(file: string): Promise<Stage[]> {
  const dockerfile = DockerfileParser.parse(await readFile(`${root}/${file}`, "utf8"));
  const stages: Stage[] = [];
  for (const instruction of dockerfile.getInstructions()) {
    if (instruction.getKeyword() === "FROM") {
      const from = dockerfile.getFROMs()[stages.length];
      stages.push({ from: from.getImage() ?? "", name: from.getBuildStage(), instructions: [] });
    } else {
      expect(stages.length, `${file}: ${instruction.getKeyword()} before FROM`).toBeGreaterThan(0);
      stages.at(-1)?.instructions.push(instruction);
    }
  }
  return stages;
}

const args = (i: Instruction) => i.getArgumentsContent() ?? "";
const ofKind = (stage: Stage, keyword: string) =>
  stage.instructions.filter((i) => i.getKeyword() === keyword);
/** The exec-form JSON array of a CMD, ENTRYPOINT or HEALTHCHECK CMD. */
const execForm = (i: Instruction) => JSON.parse(args(i).replace(/^(?:--\S+\s+)*CMD\s+/s, ""));

describe("deploy/*Dockerfile", async () => {
  const files = (await readdir(`${root}/deploy`))
    .filter((f) => f.endsWith("Dockerfile"))
    .map((f) => `deploy/${f}`);

  it("finds the CPU and GPU images", () => {
    expect(files.sort()).toEqual(["deploy/Dockerfile", "deploy/worker-gpu.Dockerfile"]);
  });

  it.each(files)("%s pins every base image to an exact version", async (file) => {
    const stages = await dockerfileStages(file);
    const names = new Set<string>();
    for (const { from, name } of stages) {
      if (!names.has(from)) {
        // A tag with a full x.y.z version, or a digest; never latest, never a floating major.
        const pinned =
          /@sha256:[0-9a-f]{64}$/.test(from) || /:[^:/]*\d+\.\d+\.\d+[^:/]*$/.test(from);
        expect(pinned, `${file}: FROM ${from} is not pinned`).toBe(true);
        expect(from, file).not.toMatch(/:latest\b/);
      }
      if (name) names.add(name);
    }
  });

  it.each(files)(
    "%s builds with deploy/build.sh and runs a slim, non-root, health-checked stage",
    async (file) => {
      const stages = await dockerfileStages(file);
      expect(stages.length, `${file}: multi-stage`).toBeGreaterThanOrEqual(2);
      const build = stages.find((s) =>
        ofKind(s, "RUN").some((r) => args(r).includes("deploy/build.sh compile")),
      );
      expect(build, `${file}: no stage runs deploy/build.sh compile`).toBeDefined();
      expect(
        ofKind(build as Stage, "RUN")
          .map(args)
          .join("\n"),
      ).toMatch(/deploy\/build\.sh runtime \/app/);

      const final = stages.at(-1) as Stage;
      expect(final, `${file}: the last stage is the runtime`).not.toBe(build);
      // No toolchain, no package install from the registry, no TypeScript runner at run time.
      const finalRuns = ofKind(final, "RUN").map(args).join("\n");
      expect(finalRuns).not.toMatch(/\bnpm (ci|install)\b|build-essential|\bg\+\+|\bnpx\b/);
      expect(
        ofKind(final, "COPY").map((i) => i.getTextContent()),
        `${file}: the runtime takes /app from the build stage`,
      ).toContain(`COPY --from=${build?.name} /app /app`);

      const users = ofKind(final, "USER").map(args);
      expect(users.length, `${file}: no USER`).toBeGreaterThan(0);
      expect(users.at(-1), file).not.toMatch(/^(root|0)(:|$)/);

      const healthchecks = ofKind(final, "HEALTHCHECK");
      expect(healthchecks, `${file}: no HEALTHCHECK`).toHaveLength(1);
      expectBuiltCommand(execForm(healthchecks[0]), `${file} HEALTHCHECK`);

      // tini as PID 1 passes SIGTERM on to node (the worker's graceful hand-back needs it).
      const [entrypoint] = ofKind(final, "ENTRYPOINT");
      expect(entrypoint && execForm(entrypoint), `${file}: ENTRYPOINT`).toEqual([
        "/usr/bin/tini",
        "--",
      ]);
      expect(finalRuns, `${file}: installs tini`).toMatch(/\btini\b/);
      const [cmd] = ofKind(final, "CMD");
      expectBuiltCommand(execForm(cmd), `${file} CMD`);
      expect(ofKind(final, "ENV").map(args).join(" ")).toMatch(/NODE_ENV=production/);
    },
  );

  it("builds from the files git tracks: .dockerignore leaves out what a checkout lacks", async () => {
    const ignored = (await readFile(`${root}/.dockerignore`, "utf8"))
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line && !line.startsWith("#"));
    // Host builds of these would shadow what the build stage makes (the addon would even be
    // compiled for the host's CPU).
    expect(ignored).toEqual(
      expect.arrayContaining([
        ".git",
        "**/node_modules",
        "dist",
        "libs/db/src/generated",
        "libs/engine/native/build",
      ]),
    );
  });

  it("ships the native OpenBLAS kernels and their library in the CPU image only", async () => {
    const cpu = await dockerfileStages("deploy/Dockerfile");
    const cpuRuntime = cpu.at(-1) as Stage;
    expect(ofKind(cpuRuntime, "RUN").map(args).join("\n")).toMatch(/libopenblas0-pthread/);
    // A worker that lost its kernels refuses to start instead of training 50 times slower.
    expect(ofKind(cpuRuntime, "ENV").map(args).join(" ")).toMatch(
      /CHATRL_REQUIRE_NATIVE_KERNELS=1/,
    );
    // Portable kernels: -march=native would tie the image to the build machine's CPU.
    expect(ofKind(cpu[0], "ARG").map(args)).toContain("CHATRL_NATIVE_MARCH=x86-64-v3");

    const gpu = await dockerfileStages("deploy/worker-gpu.Dockerfile");
    const gpuBuild = gpu.find((s) => ofKind(s, "RUN").some((r) => args(r).includes("build.sh")));
    const env = ofKind(gpuBuild as Stage, "ENV")
      .map(args)
      .join(" ");
    expect(env).toMatch(/CHATRL_NATIVE=skip/);
    expect(env).toMatch(/@tensorflow\/tfjs-node-gpu@4\.\d+\.\d+/);
    // What tfjs-node-gpu 4.x links against.
    expect(gpu.at(-1)?.from).toMatch(/^nvidia\/cuda:11\.2\.\d+-cudnn8-runtime-/);
  });
});

describe("deploy/k8s", async () => {
  type Manifest = {
    apiVersion: string;
    kind: string;
    metadata: { name: string; labels?: Record<string, string> };
    // biome-ignore lint/suspicious/noExplicitAny: manifests are checked field by field below
    spec?: any;
    data?: Record<string, string>;
  };
  const models: [string, new (m: never) => { validate(): void }][] = [
    ["apps/v1 Deployment", Deployment],
    ["v1 Service", Service],
    ["v1 ConfigMap", ConfigMap],
    ["policy/v1 PodDisruptionBudget", PodDisruptionBudget],
    ["keda.sh/v1alpha1 ScaledObject", ScaledObject],
    ["keda.sh/v1alpha1 TriggerAuthentication", TriggerAuthentication],
  ];

  async function load(dir: string): Promise<(Manifest & { file: string })[]> {
    const out: (Manifest & { file: string })[] = [];
    for (const file of (await readdir(`${root}/${dir}`)).filter((f) => f.endsWith(".yaml"))) {
      for (const doc of parseAllDocuments(await readFile(`${root}/${dir}/${file}`, "utf8"))) {
        expect(doc.errors, file).toEqual([]);
        out.push({ ...(doc.toJS() as Manifest), file: `${dir}/${file}` });
      }
    }
    return out;
  }
  const base = await load("deploy/k8s");
  const gpu = await load("deploy/k8s/gpu");
  const all = [...base, ...gpu];
  const deployments = all.filter((m) => m.kind === "Deployment");

  it("holds only manifests that validate against their API schemas", () => {
    for (const manifest of all) {
      const { file, ...doc } = manifest;
      const model = models.find(([key]) => key === `${doc.apiVersion} ${doc.kind}`)?.[1];
      expect(model, `${file}: no schema for ${doc.apiVersion} ${doc.kind}`).toBeDefined();
      // Throws with every violation (wrong types, missing required fields) in its message.
      expect(
        () => new (model as new (m: unknown) => { validate(): void })(doc).validate(),
        file,
      ).not.toThrow();
    }
    expect(deployments.map((d) => d.metadata.name).sort()).toEqual([
      "chatrl-api",
      "chatrl-inference",
      "chatrl-worker",
      "chatrl-worker-gpu",
    ]);
  });

  it("a schema violation is caught (the validation is not vacuous)", () => {
    const api = structuredClone(deployments.find((d) => d.metadata.name === "chatrl-api"));
    if (!api) throw new Error("no api Deployment");
    const { file: _, ...doc } = api;
    doc.spec.template.spec.containers[0].ports[0].containerPort = "8080";
    expect(() => new Deployment(doc as never).validate()).toThrow(/containerPort must be integer/);
  });

  it("runs pinned images of the built output as non-root, with probes and resources", () => {
    for (const d of deployments) {
      const pod = d.spec.template.spec;
      expect(pod.securityContext?.runAsNonRoot, d.metadata.name).toBe(true);
      expect(pod.securityContext?.runAsUser, d.metadata.name).toBeGreaterThan(0);
      expect(d.spec.selector.matchLabels.app).toBe(d.spec.template.metadata.labels.app);
      for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
        const where = `${d.metadata.name}/${c.name}`;
        expect(c.image, where).toMatch(/^chatrl(-worker-gpu)?:\d+\.\d+\.\d+$/);
        const entry = expectBuiltCommand(c.command, where);
        expect(c.securityContext?.allowPrivilegeEscalation, where).toBe(false);
        expect(c.resources?.requests?.memory && c.resources?.limits?.memory, where).toBeTruthy();
        if (pod.initContainers?.includes(c)) {
          expect(entry, where).toBe("migrate");
          continue;
        }
        expect(c.readinessProbe?.httpGet?.path, where).toBe("/readyz");
        expect(c.livenessProbe?.httpGet?.path, where).toBe("/healthz");
        const port = c.readinessProbe.httpGet.port;
        expect(
          c.ports?.map((p: { containerPort: number }) => p.containerPort),
          where,
        ).toContain(port);
      }
      // Every Deployment migrates first, so new code never meets an old schema mid-rollout.
      expect(
        pod.initContainers?.map((c: { name: string }) => c.name),
        d.metadata.name,
      ).toEqual(["migrate"]);
      for (const ref of pod.containers.flatMap((c: { envFrom?: unknown[] }) => c.envFrom ?? [])) {
        const cm = (ref as { configMapRef?: { name: string } }).configMapRef?.name;
        if (cm)
          expect(all.some((m) => m.kind === "ConfigMap" && m.metadata.name === cm)).toBe(true);
      }
    }
    for (const s of all.filter((m) => m.kind === "Service")) {
      expect(
        deployments.some((d) => d.spec.template.metadata.labels.app === s.spec.selector.app),
        `${s.metadata.name} selects no Deployment`,
      ).toBe(true);
    }
  });

  it("gives workers time to checkpoint and hand their stage back on SIGTERM", () => {
    for (const d of deployments.filter((m) => m.metadata.name.startsWith("chatrl-worker"))) {
      expect(d.spec.template.spec.terminationGracePeriodSeconds * 1000).toBeGreaterThan(
        DEFAULT_WORKER_OPTIONS.lockDurationMs,
      );
    }
  });

  it("scales each worker pool on the waiting and running jobs of exactly the queues it serves", () => {
    const configMap = base.find(
      (m) => m.kind === "ConfigMap" && m.metadata.name === "chatrl-config",
    );
    const prefix = configMap?.data?.CHATRL_QUEUE_PREFIX;
    expect(prefix).toBeTruthy();
    const auths = new Set(
      all.filter((m) => m.kind === "TriggerAuthentication").map((m) => m.metadata.name),
    );
    const scaled = all.filter((m) => m.kind === "ScaledObject");
    expect(scaled.map((s) => s.spec.scaleTargetRef.name).sort()).toEqual([
      "chatrl-worker",
      "chatrl-worker-gpu",
    ]);
    for (const so of scaled) {
      const target = deployments.find((d) => d.metadata.name === so.spec.scaleTargetRef.name);
      expect(target, `${so.metadata.name}: no such Deployment`).toBeDefined();
      const container = target?.spec.template.spec.containers[0];
      const queues = String(
        container.env.find((e: { name: string }) => e.name === "CHATRL_QUEUES")?.value,
      ).split(",") as StageKind[];
      const expected = queues.flatMap((q) =>
        ["wait", "active"].map((list) => `${prefix}:${STAGE_QUEUES[q]}:${list}`),
      );
      const triggers = so.spec.triggers as {
        type: string;
        name: string;
        authenticationRef: { name: string };
        metadata: Record<string, string>;
      }[];
      expect(triggers.map((t) => t.metadata.listName).sort()).toEqual(expected.sort());
      for (const t of triggers) {
        expect(t.type).toBe("redis");
        expect(auths.has(t.authenticationRef?.name), `${t.name}: authenticationRef`).toBe(true);
        expect(t.metadata.listLength).toBe("1");
      }
      // scalingModifiers (KEDA 2.13+) is newer than the schema above, so checked here: the
      // replicas are the sum of every trigger's list, one worker per job.
      const modifiers = so.spec.advanced?.scalingModifiers;
      expect(modifiers).toMatchObject({ target: "1", metricType: "AverageValue" });
      const terms = String(modifiers.formula)
        .split("+")
        .map((term) => term.trim());
      expect(terms.sort()).toEqual(triggers.map((t) => t.name).sort());
    }
    // Pools applied together must not both scale on one queue (two workers per job).
    const lists = base
      .filter((m) => m.kind === "ScaledObject")
      .flatMap((so) =>
        so.spec.triggers.map((t: { metadata: { listName: string } }) => t.metadata.listName),
      );
    expect(new Set(lists).size).toBe(lists.length);
  });
});

// The production-like stack cannot start here (no Docker engine), so its files are checked the
// way an engine would read them: docker-compose validates the compose file offline.
import { execFile } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";

const run = promisify(execFile);
const root = new URL("..", import.meta.url).pathname;

describe("docker-compose.yml", () => {
  it("is accepted by docker-compose config", async () => {
    // Throws (non-zero exit) with docker-compose's complaint when the file is invalid.
    const { stdout } = await run("docker-compose", ["config"], { cwd: root });
    const resolved = parse(stdout);
    expect(Object.keys(resolved.services).sort()).toEqual(
      ["api", "inference", "migrate", "postgres", "redis", "worker"].sort(),
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
});

describe("deploy/k8s", () => {
  it("holds parseable manifests with probes on every Deployment", async () => {
    const dir = `${root}/deploy/k8s`;
    const kinds: string[] = [];
    for (const file of await readdir(dir)) {
      for (const doc of parseAllDocuments(await readFile(`${dir}/${file}`, "utf8"))) {
        expect(doc.errors, file).toEqual([]);
        const manifest = doc.toJS();
        kinds.push(manifest.kind);
        if (manifest.kind !== "Deployment") continue;
        for (const c of manifest.spec.template.spec.containers) {
          expect(c.livenessProbe ?? c.readinessProbe, `${file}: ${c.name}`).toBeTruthy();
        }
      }
    }
    expect(kinds.filter((k) => k === "Deployment")).toHaveLength(3);
  });
});

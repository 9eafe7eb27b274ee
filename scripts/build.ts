// `npm run build`: compiles the services and command-line tools to JavaScript under dist/, one
// esbuild bundle per entry point (docs/decisions/0006-production-build.md). The workspaces
// (@chatrl/*) and the generated Prisma client are bundled in; every npm package stays an import
// that node resolves from node_modules, so a runtime needs only production dependencies.
// `npm start` and the tests keep running the TypeScript sources through tsx.
import { cp, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { isBuiltin } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { build, type Plugin } from "esbuild";

const root = path.resolve(fileURLToPath(new URL("..", import.meta.url)));

/** dist/<name>.js: what each bundle starts, from the repository root. */
export const ENTRY_POINTS: Record<string, string> = {
  api: "services/api/src/main.ts",
  worker: "services/worker/src/main.ts",
  inference: "services/inference/src/main.ts",
  migrate: "libs/db/src/migrate-cli.ts",
  "api-keys": "libs/db/src/api-keys-cli.ts",
  chatrl: "libs/client/src/cli.ts",
  healthcheck: "scripts/healthcheck.ts",
};

/**
 * Files the bundles read at run time by a path relative to their source file (import.meta.url),
 * so a runtime keeps them where they are in the repository.
 */
export const RUNTIME_ASSETS = [
  "openapi/openapi.yaml",
  "prisma/migrations",
  "services/api/src/static",
  // The flow thread's code: a worker thread starts it as a file (libs/queue/src/flow-thread.ts).
  "libs/queue/src/flow-thread-worker.cjs",
] as const;

/**
 * Packages the code imports by a computed name, which esbuild cannot see: the engine's backend
 * selection (libs/engine/src/backend.ts). tfjs-node(-gpu) are optional and not listed.
 */
const DYNAMIC_IMPORTS = ["@tensorflow/tfjs-backend-wasm"];

/** The engine's native OpenBLAS kernels, built by scripts/build-native.sh. */
export const NATIVE_ADDON = "libs/engine/native/build/Release/chatrl_kernels.node";

/**
 * Source files find their data next to themselves (`new URL("../../../openapi/openapi.yaml",
 * import.meta.url)`). In a bundle import.meta.url is the bundle's own address, so each source
 * file's import.meta.url becomes the address its source file has relative to dist/: the data
 * files stay at their repository paths (RUNTIME_ASSETS) and the paths in the code stay right.
 */
function sourceImportMetaUrl(outdir: string): Plugin {
  return {
    name: "source-import-meta-url",
    setup(b) {
      b.onLoad({ filter: /\.ts$/ }, async (args) => {
        if (args.path.includes(`${path.sep}node_modules${path.sep}`)) return undefined;
        const source = await readFile(args.path, "utf8");
        if (/import\.meta\.(dirname|filename)/.test(source)) {
          throw new Error(`${args.path}: use import.meta.url (the build rewrites only that)`);
        }
        if (!source.includes("import.meta.url")) return undefined;
        const relative = path.relative(outdir, args.path).split(path.sep).join("/");
        const url = `new URL(${JSON.stringify(relative)}, import.meta.url).href`;
        return { contents: source.replaceAll("import.meta.url", url), loader: "ts" };
      });
    },
  };
}

/** Bundles the workspaces' own code; leaves every npm package to node_modules. */
const externalPackages: Plugin = {
  name: "external-packages",
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith("@chatrl/")) return undefined;
      return { path: args.path, external: true };
    });
  },
};

export async function buildDist(outdir = path.join(root, "dist")): Promise<string[]> {
  await rm(outdir, { recursive: true, force: true });
  const result = await build({
    absWorkingDir: root,
    entryPoints: Object.fromEntries(
      Object.entries(ENTRY_POINTS).map(([name, file]) => [name, path.join(root, file)]),
    ),
    outdir,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    sourcemap: true,
    // The services' pino logs, error messages and stack traces keep their names.
    keepNames: true,
    logLevel: "warning",
    banner: { js: "// Built by scripts/build.ts from the TypeScript sources; do not edit." },
    plugins: [externalPackages, sourceImportMetaUrl(outdir)],
    metafile: true,
  });
  // dist/*.js are ES modules whatever package.json sits above them.
  await writeFile(path.join(outdir, "package.json"), `${JSON.stringify({ type: "module" })}\n`);
  // What the bundles import from node_modules: a runtime checks each resolves (deploy/build.sh).
  const externals = new Set<string>(DYNAMIC_IMPORTS);
  for (const output of Object.values(result.metafile.outputs)) {
    for (const { path: specifier, external } of output.imports) {
      if (external && !isBuiltin(specifier)) externals.add(specifier);
    }
  }
  await writeFile(
    path.join(outdir, "externals.json"),
    `${JSON.stringify([...externals].sort(), null, 2)}\n`,
  );
  return Object.keys(result.metafile.outputs).filter((file) => file.endsWith(".js"));
}

/**
 * Lays out a runtime in `dir` from this repository's dist/ (built first): the bundles, the
 * RUNTIME_ASSETS, the native addon when `native` is not "skip" ("required": fail without it),
 * and the manifests `npm ci --omit=dev` needs (root and workspace package.json, the lockfile).
 * No TypeScript and no node_modules: the caller installs the production dependencies.
 */
export async function stageRuntime(
  dir: string,
  native: "required" | "optional" | "skip" = "required",
): Promise<string[]> {
  const files = [
    "dist",
    ...RUNTIME_ASSETS,
    "package.json",
    "package-lock.json",
    ...(await workspaceManifests()),
  ];
  if (native !== "skip") {
    if (await exists(path.join(root, NATIVE_ADDON))) files.push(NATIVE_ADDON);
    else if (native === "required") {
      throw new Error(`${NATIVE_ADDON} is missing: run scripts/build-native.sh first`);
    }
  }
  if (!(await exists(path.join(root, "dist")))) throw new Error("dist/ is missing: build first");
  await mkdir(dir, { recursive: true });
  for (const file of files) {
    await cp(path.join(root, file), path.join(dir, file), { recursive: true });
  }
  for (const manifest of files.filter((file) => file.endsWith("package.json"))) {
    await dropDevDependencies(path.join(dir, manifest));
  }
  return files;
}

/**
 * A runtime's manifests declare no devDependencies. With them, `npm ci --omit=dev` still ships
 * the Prisma CLI (and Prisma Studio's React) and TypeScript: @prisma/client and valibot declare
 * them optional peers, and npm counts a dev dependency that a production package also names as
 * a peer as a production one. Without them the optional peers are simply absent, and
 * `npm install --omit=dev` installs the lockfile's versions of everything else.
 */
async function dropDevDependencies(manifest: string): Promise<void> {
  const pkg = JSON.parse(await readFile(manifest, "utf8")) as Record<string, unknown>;
  if (!("devDependencies" in pkg)) return;
  delete pkg.devDependencies;
  await writeFile(manifest, `${JSON.stringify(pkg, null, 2)}\n`);
}

async function workspaceManifests(): Promise<string[]> {
  const { workspaces } = JSON.parse(await readFile(path.join(root, "package.json"), "utf8")) as {
    workspaces: string[];
  };
  const manifests: string[] = [];
  for (const pattern of workspaces) {
    // "libs/*": every directory under libs/ with a package.json.
    const parent = pattern.replace(/\/\*$/, "");
    for (const name of (await readdir(path.join(root, parent))).sort()) {
      const manifest = `${parent}/${name}/package.json`;
      if (await exists(path.join(root, manifest))) manifests.push(manifest);
    }
  }
  return manifests;
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [command, dir, native] = process.argv.slice(2);
  if (command === "stage" && dir) {
    const mode = (native ?? "required") as "required" | "optional" | "skip";
    if (!["required", "optional", "skip"].includes(mode)) {
      throw new Error(`native must be required, optional or skip, not ${native}`);
    }
    for (const file of await stageRuntime(path.resolve(dir), mode)) console.log(`stage: ${file}`);
  } else if (command === undefined) {
    for (const file of await buildDist()) console.log(`build: ${file}`);
  } else {
    console.error("usage: tsx scripts/build.ts            # bundle to dist/");
    console.error("       tsx scripts/build.ts stage DIR [required|optional|skip]");
    process.exit(2);
  }
}

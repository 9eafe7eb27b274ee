#!/usr/bin/env bash
# The build steps of chatrl's images. deploy/Dockerfile and deploy/worker-gpu.Dockerfile run this
# script, and test/deploy-build.test.ts runs it on a fresh copy of the repository, so what the
# test proves (build, install, start the services, train, chat) is what the images do.
#
#   deploy/build.sh compile       in a checkout: every dependency (npm ci), the Prisma client, the
#                                 JavaScript bundles in dist/ and the native OpenBLAS kernels
#   deploy/build.sh runtime DIR   lays out DIR to run `node dist/<service>.js`: the bundles, the
#                                 files they read, the kernels and production dependencies only
#
# Environment:
#   CHATRL_NATIVE          required (default): the kernels must build, load and be shipped;
#                          skip: none (the GPU image, where tfjs-node-gpu brings TensorFlow's own)
#   CHATRL_NATIVE_MARCH    the kernels' -march, default x86-64-v3 (AVX2 + FMA: x86 servers since
#                          2013); "native" would tie the image to the CPU of the machine building it
#   CHATRL_EXTRA_PACKAGES  npm packages added to the runtime, e.g. @tensorflow/tfjs-node-gpu@4.22.0
set -euo pipefail
cd "$(dirname "$0")/.."
native="${CHATRL_NATIVE:-required}"
npm_flags=(--no-audit --no-fund --loglevel=warn)

case "${1:-}" in
  compile)
    npm ci "${npm_flags[@]}"
    npm run generate:prisma --silent
    npx tsx scripts/build.ts
    if [ "$native" != skip ]; then
      CHATRL_NATIVE_MARCH="${CHATRL_NATIVE_MARCH:-x86-64-v3}" bash scripts/build-native.sh
    fi
    ;;
  runtime)
    dir="${2:?usage: deploy/build.sh runtime DIR}"
    npx tsx scripts/build.ts stage "$dir" "$native"
    cd "$dir"
    # The staged manifests have no devDependencies (scripts/build.ts says why npm ci cannot
    # leave them out), so npm install, not ci; the lockfile, checked by `npm ci` in compile,
    # still fixes every version.
    npm install --omit=dev "${npm_flags[@]}"
    if [ -n "${CHATRL_EXTRA_PACKAGES:-}" ]; then
      # shellcheck disable=SC2086 # a list of package specs
      npm install --omit=dev --no-save "${npm_flags[@]}" $CHATRL_EXTRA_PACKAGES
    fi
    # Every package the bundles import resolves from here, with production dependencies only.
    node --input-type=module -e '
      import { readFileSync } from "node:fs";
      const wanted = JSON.parse(readFileSync("dist/externals.json", "utf8"));
      const missing = wanted.filter((s) => { try { import.meta.resolve(s); return false; } catch { return true; } });
      if (missing.length > 0) { console.error(`runtime: cannot resolve ${missing.join(", ")}`); process.exit(1); }
      console.log(`runtime: ${wanted.length} imported packages resolve`);'
    if [ "$native" = required ]; then
      node -e 'const k = require("./libs/engine/native/build/Release/chatrl_kernels.node");
        console.log("runtime: native kernels load, OpenBLAS", k.blasInfo().core)'
    fi
    ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac

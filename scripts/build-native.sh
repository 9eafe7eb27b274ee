#!/usr/bin/env bash
# Builds the engine's native kernels (libs/engine/native: OpenBLAS products and fused attention,
# layer norm and linear for the wasm and cpu backends) with node-gyp. The engine runs without
# them, on pure TensorFlow.js, only slower; a failed build fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# OpenBLAS is opened at run time (dlopen), so only its runtime package is needed.
if ! ldconfig -p | grep 'libopenblas\.so\.0' >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "build-native: libopenblas.so.0 is missing; install libopenblas0-pthread (apt)" >&2
    exit 1
  fi
  apt-get install -y -qq libopenblas0-pthread >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null; }
fi

# Node's headers ship with Debian's nodejs under <prefix>/include/node; pointing node-gyp at them
# keeps it from downloading headers.
node_prefix="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
gyp_args=()
if [ -f "$node_prefix/include/node/common.gypi" ]; then gyp_args+=(--nodedir="$node_prefix"); fi

node_gyp="$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js"
cd libs/engine/native
if [ -f "$node_gyp" ]; then
  node "$node_gyp" rebuild "${gyp_args[@]}" --loglevel=warn
else
  npx --yes node-gyp rebuild "${gyp_args[@]}" --loglevel=warn
fi
node -e 'const k = require("./build/Release/chatrl_kernels.node"); console.log("build-native: OpenBLAS", k.blasInfo().core, "threads", k.getThreads())'

{
  "variables": {
    "march%": "<!(node -p \"process.env.CHATRL_NATIVE_MARCH || 'native'\")"
  },
  "targets": [
    {
      "target_name": "chatrl_kernels",
      "sources": ["src/kernels.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-O3", "-march=<(march)", "-std=c++17"],
      "libraries": ["-ldl", "-lpthread"]
    }
  ]
}

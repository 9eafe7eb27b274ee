# GPU worker: the same compiled worker on @tensorflow/tfjs-node-gpu, which the engine's backend
# selection prefers when it loads. tfjs-node-gpu 4.x links against CUDA 11.2 and cuDNN 8.1, so the
# image is NVIDIA's CUDA 11.2.2 / cuDNN 8 on Ubuntu 20.04, with Node copied from the official image.
#   docker build -f deploy/worker-gpu.Dockerfile -t chatrl-worker-gpu:0.1.0 .
# The build steps are deploy/build.sh's, as in deploy/Dockerfile, without the OpenBLAS kernels
# (tfjs-node-gpu runs TensorFlow's own) and with tfjs-node-gpu added to the runtime.

# Node 20 itself, from the official image (its binary needs glibc 2.28; Ubuntu 20.04 has 2.31).
FROM node:20.20.2-bookworm-slim AS node

# Build stage: the CUDA devel image, so tfjs-node-gpu's binding compiles against this glibc.
FROM nvidia/cuda:11.2.2-cudnn8-devel-ubuntu20.04 AS build
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
COPY --from=node /usr/local/include/node /usr/local/include/node
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CHATRL_NATIVE=skip \
    CHATRL_EXTRA_PACKAGES=@tensorflow/tfjs-node-gpu@4.22.0
RUN bash deploy/build.sh compile && bash deploy/build.sh runtime /app

# Runtime stage: CUDA and cuDNN runtime libraries, Node, tini; no compiler.
FROM nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04 AS runtime
COPY --from=node /usr/local/bin/node /usr/local/bin/node
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 node \
 && useradd --uid 1000 --gid node --create-home --shell /usr/sbin/nologin node
WORKDIR /app
COPY --from=build /app /app
ENV NODE_ENV=production \
    NODE_OPTIONS=--enable-source-maps \
    CHATRL_BACKEND=tensorflow-gpu \
    CHATRL_QUEUES=sft,reward,ppo \
    CHATRL_WORKER_HEALTH_PORT=8081
USER node
EXPOSE 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["node", "dist/healthcheck.js"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/worker.js"]

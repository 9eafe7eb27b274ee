# GPU worker: the same code on @tensorflow/tfjs-node-gpu, which the engine's backend selection
# prefers when it can be loaded. tfjs-node-gpu 4.x links against CUDA 11.2 and cuDNN 8.1.
FROM nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential python3 \
 && curl -fsSL https://deb.nodesource.com/setup_20.x | bash - \
 && apt-get install -y --no-install-recommends nodejs && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
COPY libs libs
COPY services services
COPY prisma prisma
COPY prisma.config.ts tsconfig.json ./
COPY scripts scripts
COPY openapi openapi
RUN npm ci && npm run generate:prisma \
 && npm install --no-save --foreground-scripts @tensorflow/tfjs-node-gpu@4.22.0
ENV CHATRL_BACKEND=tensorflow-gpu CHATRL_QUEUES=sft,reward,ppo
CMD ["npx", "tsx", "services/worker/src/main.ts"]

// The model registry (loaded models and their generation queues), on the backend chosen by
// the configuration. Loaded models are disposed when the app closes.
import { initBackend } from "@chatrl/engine";
import type { FastifyInstance } from "fastify";
import fp from "fastify-plugin";
import { ModelRegistry, type RegistryOptions } from "../model-registry.ts";

declare module "fastify" {
  interface FastifyInstance {
    modelRegistry: ModelRegistry;
  }
}

export type ModelsPluginOptions = RegistryOptions & { backend?: Parameters<typeof initBackend>[0] };

export default fp(
  async (app: FastifyInstance, opts: ModelsPluginOptions) => {
    const backend = await initBackend(opts.backend);
    app.log.info({ backend: backend.name, threads: backend.threads }, "tensor backend ready");
    const registry = new ModelRegistry(app.db, opts);
    app.decorate("modelRegistry", registry);
    app.addHook("onClose", async () => registry.close());
  },
  { name: "models", dependencies: ["db"] },
);

// The inference service's entry point: configuration from the environment, graceful shutdown
// on SIGINT/SIGTERM (a second signal, or 10 s, forces the exit).
import { ConfigError, loadConfigOrExit } from "@chatrl/contracts";
import closeWithGrace from "close-with-grace";
import { loadRegistryOptions } from "./registry-options.ts";
import { startInferenceServer } from "./server.ts";

const config = loadConfigOrExit(process.env);
let registry: ReturnType<typeof loadRegistryOptions>;
try {
  registry = loadRegistryOptions(process.env);
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  console.error(error.message);
  process.exit(1);
}
const server = await startInferenceServer(config, { registry }).catch(
  (error: NodeJS.ErrnoException) => {
    // The system refused (port taken, address not available): one line, as for bad configuration.
    if (!error.syscall) throw error;
    console.error(`inference: cannot start: ${error.message}`);
    process.exit(1);
  },
);

closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err) server.app.log.error({ err }, "shutting down after an error");
  else server.app.log.info({ signal }, "shutting down");
  await server.close();
});

// The inference service's entry point: configuration from the environment, graceful shutdown
// on SIGINT/SIGTERM (a second signal, or 10 s, forces the exit).
import { ConfigError, loadConfig } from "@chatrl/contracts";
import closeWithGrace from "close-with-grace";
import { startInferenceServer } from "./server.ts";

let config: ReturnType<typeof loadConfig>;
try {
  config = loadConfig(process.env);
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  console.error(error.message);
  process.exit(1);
}
const server = await startInferenceServer(config);

closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err) server.app.log.error({ err }, "shutting down after an error");
  else server.app.log.info({ signal }, "shutting down");
  await server.close();
});

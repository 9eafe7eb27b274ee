// What every command needs: where the services are, the key, and where to write.
import { type ChatrlClient, createChatrlClient } from "../client.ts";

export type CliIo = {
  stdin: NodeJS.ReadableStream;
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  /** Environment variables (CHATRL_API_URL, CHATRL_INFERENCE_URL, CHATRL_API_KEY). */
  env: Record<string, string | undefined>;
};

export type GlobalOptions = {
  apiUrl?: string;
  inferenceUrl?: string;
  apiKey?: string;
  json?: boolean;
};

export const DEFAULT_API_URL = "http://127.0.0.1:8080";
export const DEFAULT_INFERENCE_URL = "http://127.0.0.1:8000";

export type CliContext = {
  io: CliIo;
  json: boolean;
  api(): ChatrlClient;
  inference(): ChatrlClient;
  print(line?: string): void;
  printJson(value: unknown): void;
};

export function createContext(io: CliIo, options: GlobalOptions): CliContext {
  const apiKey = options.apiKey ?? io.env.CHATRL_API_KEY;
  const apiUrl = options.apiUrl ?? io.env.CHATRL_API_URL ?? DEFAULT_API_URL;
  const inferenceUrl = options.inferenceUrl ?? io.env.CHATRL_INFERENCE_URL ?? DEFAULT_INFERENCE_URL;
  return {
    io,
    json: options.json === true,
    api: () => createChatrlClient({ baseUrl: apiUrl, apiKey }),
    inference: () => createChatrlClient({ baseUrl: inferenceUrl, apiKey }),
    print: (line = "") => io.stdout.write(`${line}\n`),
    printJson: (value) => io.stdout.write(`${JSON.stringify(value, null, 2)}\n`),
  };
}

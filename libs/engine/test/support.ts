// Shared set-up of the engine tests: the wasm backend (what a machine without tfjs-node gets)
// and a handful of chat examples small enough to overfit in seconds.
import {
  type BackendInfo,
  initBackend,
  rowToSftExamples,
  type SftConfig,
  type SftExample,
} from "../src/index";

export function useTestBackend(): Promise<BackendInfo> {
  return initBackend("wasm");
}

export const EXAMPLES: SftExample[] = [
  { prompt: "What is 2+2?", response: "4" },
  { prompt: "Say hi", response: "Hello there!" },
  { prompt: "Color of the sky?", response: "Blue." },
  { prompt: "Capital of France?", response: "Paris." },
].flatMap(rowToSftExamples);

export const OVERFIT: SftConfig = {
  maxSteps: 40,
  batchSize: 4,
  learningRate: 3e-3,
  maxSeqLen: 64,
  epochs: 1000,
  warmupSteps: 4,
  weightDecay: 0.01,
  gradClip: 1,
  seed: 7,
};

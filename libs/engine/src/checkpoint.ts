// Model checkpoints as safetensors with Hugging Face GPT-2 tensor names and the model config
// in the metadata, so a trained model leaves in a format other tools read.
import { createHash } from "node:crypto";
import * as tf from "@tensorflow/tfjs";
import type { ModelConfig } from "./config";
import { GPT } from "./model";
import { decodeSafetensors, encodeSafetensors, type StoredTensor } from "./safetensors";

/** Metadata key holding the ModelConfig as JSON. */
export const MODEL_CONFIG_KEY = "chatrl.model_config";

/** Reads tensors into plain arrays (the tensors stay owned by the caller). */
export async function tensorsToStored(
  tensors: Map<string, tf.Tensor>,
): Promise<Map<string, StoredTensor>> {
  const out = new Map<string, StoredTensor>();
  for (const [name, t] of tensors) {
    if (t.dtype !== "float32" && t.dtype !== "int32")
      throw new Error(`tensor ${name}: cannot store dtype ${t.dtype}`);
    const data = (await t.data()) as Float32Array | Int32Array;
    out.set(name, { dtype: t.dtype, shape: [...t.shape], data });
  }
  return out;
}

/** The model as safetensors bytes: HF GPT-2 names, config in __metadata__. */
export async function saveModel(model: GPT): Promise<Uint8Array> {
  const tensors = await tensorsToStored(model.namedWeights());
  // "format": "pt" is what Hugging Face transformers checks before loading a safetensors file.
  return encodeSafetensors(tensors, {
    format: "pt",
    [MODEL_CONFIG_KEY]: JSON.stringify(model.config),
  });
}

/** A model rebuilt from saveModel bytes; the caller owns it (dispose()). */
export async function loadModel(bytes: Uint8Array): Promise<GPT> {
  const { tensors, metadata } = decodeSafetensors(bytes);
  const configJson = metadata[MODEL_CONFIG_KEY];
  if (!configJson)
    throw new Error(`checkpoint has no model config (metadata "${MODEL_CONFIG_KEY}")`);
  let config: ModelConfig;
  try {
    config = JSON.parse(configJson) as ModelConfig;
  } catch {
    throw new Error(`checkpoint model config (metadata "${MODEL_CONFIG_KEY}") is not valid JSON`);
  }
  const model = new GPT(config, 0);
  try {
    loadWeights(model, tensors);
  } catch (err) {
    model.dispose();
    throw err;
  }
  return model;
}

/**
 * Names in files written by other tools -> our names. GPT2LMHeadModel prefixes "transformer.";
 * the causal-mask buffers "attn.bias"/"attn.masked_bias" are not weights.
 */
function ourName(fileName: string): string | undefined {
  const name = fileName.startsWith("transformer.")
    ? fileName.slice("transformer.".length)
    : fileName;
  if (/^h\.\d+\.attn\.(masked_)?bias$/.test(name)) return undefined;
  return name;
}

/**
 * Copies stored tensors into the model's weights, asserting that every weight is present with
 * its exact shape and that no unknown tensor is left over. No transposes are needed: the
 * projections use GPT-2's Conv1D layout [in, out] in both.
 */
export function loadWeights(model: GPT, tensors: Map<string, StoredTensor>): void {
  const weights = model.namedWeights();
  const byOurName = new Map<string, StoredTensor>();
  for (const [fileName, t] of tensors) {
    const name = ourName(fileName);
    if (name === undefined) continue;
    if (name === "lm_head.weight" && model.config.tiedEmbeddings) continue; // tied to wte.weight
    if (!weights.has(name))
      throw new Error(`checkpoint tensor ${fileName} is not a weight of this model`);
    byOurName.set(name, t);
  }
  for (const [name, variable] of weights) {
    const stored = byOurName.get(name);
    if (!stored) throw new Error(`checkpoint is missing ${name}`);
    if (!tf.util.arraysEqual(stored.shape, variable.shape)) {
      throw new Error(
        `checkpoint ${name} has shape [${stored.shape}], the model expects [${variable.shape}]`,
      );
    }
  }
  for (const [name, variable] of weights) {
    const stored = byOurName.get(name) as StoredTensor;
    tf.tidy(() => variable.assign(tf.tensor(stored.data, stored.shape, "float32")));
  }
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

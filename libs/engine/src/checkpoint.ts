// Model checkpoints as safetensors with Hugging Face GPT-2 tensor names and the model config
// in the metadata, so a trained model leaves in a format other tools read.
import { createHash } from "node:crypto";
import * as tf from "@tensorflow/tfjs";
import { type ModelConfig, TOKENIZER_VERSIONS, type TokenizerVersion } from "./config";
import { GPT } from "./model";
import { decodeSafetensors, encodeSafetensors, type StoredTensor } from "./safetensors";
import { V_HEAD, ValueModel } from "./value-model";

/** Metadata key holding the ModelConfig as JSON. */
export const MODEL_CONFIG_KEY = "chatrl.model_config";
/** Metadata key naming what the file is: a policy (sft, actor, ema) or a value model (reward, critic). */
export const MODEL_ROLE_KEY = "chatrl.role";
/**
 * Metadata key naming the tokenizer and chat-template version the model reads ("byte-v2"); a
 * file without it is "byte-v1" (saved before versions were recorded: roles spelled in bytes).
 */
export const TOKENIZER_KEY = "chatrl.tokenizer";

export type PolicyRole = "sft" | "actor" | "ema";
export type ValueRole = "reward" | "critic";
export type ModelRole = PolicyRole | ValueRole;
const POLICY_ROLES: readonly string[] = ["sft", "actor", "ema"];

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

/**
 * The model as safetensors bytes: HF GPT-2 names (plus v_head.weight for a value model), config
 * and role in __metadata__.
 */
export async function saveModel(model: GPT | ValueModel, role?: ModelRole): Promise<Uint8Array> {
  const isValue = model instanceof ValueModel;
  if (role && isValue !== !POLICY_ROLES.includes(role)) {
    throw new Error(
      `cannot save a ${isValue ? "value model" : "policy"} as role "${role}" ` +
        `(policies: ${POLICY_ROLES.join(", ")}; value models: reward, critic)`,
    );
  }
  // LoRA adapters are stored merged into their projections: the file is a plain model.
  const body = model instanceof ValueModel ? model.body : model;
  const tensors = await body.withLoraMerged(() => tensorsToStored(model.namedWeights()));
  // "format": "pt" is what Hugging Face transformers checks before loading a safetensors file.
  return encodeSafetensors(tensors, {
    format: "pt",
    [MODEL_CONFIG_KEY]: JSON.stringify(model.config),
    [TOKENIZER_KEY]: model.config.tokenizer ?? "byte-v1",
    ...(role ? { [MODEL_ROLE_KEY]: role } : {}),
  });
}

type ParsedFile = { tensors: Map<string, StoredTensor>; config: ModelConfig; role: string };

function parseModelFile(bytes: Uint8Array): ParsedFile {
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
  // The tokenizer the model was trained with: the file's record, else byte-v1 (older files).
  const tokenizer = metadata[TOKENIZER_KEY] ?? config.tokenizer ?? "byte-v1";
  if (!TOKENIZER_VERSIONS.includes(tokenizer as TokenizerVersion)) {
    throw new Error(
      `checkpoint reads tokenizer "${tokenizer}", which this engine does not know (known: ${TOKENIZER_VERSIONS.join(", ")})`,
    );
  }
  config = { ...config, tokenizer: tokenizer as TokenizerVersion };
  // Files from before roles were recorded: a value head says what the file is.
  const role = metadata[MODEL_ROLE_KEY] ?? (tensors.has(V_HEAD) ? "reward" : "sft");
  return { tensors, config, role };
}

/**
 * A policy (sft, actor or ema file) rebuilt from saveModel bytes; the caller owns it (dispose()).
 * A reward or critic file is refused, naming both roles.
 */
export async function loadModel(bytes: Uint8Array, expected?: PolicyRole): Promise<GPT> {
  const { tensors, config, role } = parseModelFile(bytes);
  if (!POLICY_ROLES.includes(role)) {
    throw new Error(
      `checkpoint is a "${role}" model (a value model with ${V_HEAD}); ` +
        `expected a policy (${expected ?? POLICY_ROLES.join(", ")})`,
    );
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
 * A value model from a reward or critic file (with its head), or from a policy file (the
 * reward model's usual start, as DeepSpeed-Chat starts step 2 from a pretrained model): the
 * body's weights and a fresh head drawn from `seed`. The caller owns it.
 */
export async function loadValueModel(bytes: Uint8Array, seed = 0): Promise<ValueModel> {
  const { tensors, config } = parseModelFile(bytes);
  const stored = tensors.get(V_HEAD);
  const body = new GPT(config, seed);
  const bodyTensors = new Map(tensors);
  bodyTensors.delete(V_HEAD);
  const head = stored ? tf.tensor(stored.data, stored.shape, "float32") : undefined;
  try {
    loadWeights(body, bodyTensors, { allowMissingLmHead: true });
    return new ValueModel(body, seed, head as tf.Tensor2D | undefined);
  } catch (err) {
    body.dispose();
    throw err;
  } finally {
    head?.dispose(); // the head variable holds its own copy
  }
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
export function loadWeights(
  model: GPT,
  tensors: Map<string, StoredTensor>,
  opts: { allowMissingLmHead?: boolean } = {},
): void {
  model.unpackDecoding(); // its decode copies would no longer match
  const weights = model.namedWeights();
  // A value model's file has no untied LM head (it never uses one): keep the fresh one.
  if (opts.allowMissingLmHead && !tensors.has("lm_head.weight")) weights.delete("lm_head.weight");
  const byOurName = new Map<string, StoredTensor>();
  for (const [fileName, t] of tensors) {
    const name = ourName(fileName);
    if (name === undefined) continue;
    if (name === "lm_head.weight" && model.config.tiedEmbeddings) continue; // tied to wte.weight
    if (!weights.has(name)) {
      throw new Error(
        name === V_HEAD
          ? `checkpoint tensor ${V_HEAD} belongs to a value model (reward or critic), not a policy`
          : `checkpoint tensor ${fileName} is not a weight of this model`,
      );
    }
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

import { beforeAll, describe, expect, it } from "vitest";
import {
  decodeSafetensors,
  encodeSafetensors,
  GPT,
  loadModel,
  MODEL_CONFIG_KEY,
  MODEL_PRESETS,
  type ModelConfig,
  saveModel,
  sha256Hex,
  tf,
} from "../src/index";
import { useTestBackend } from "./support";

beforeAll(async () => {
  await useTestBackend();
});

describe("safetensors", () => {
  it("round-trips tensors, shapes, dtypes and metadata, and follows the file layout", () => {
    const tensors = new Map([
      [
        "a.weight",
        { dtype: "float32" as const, shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, -6.5]) },
      ],
      ["b", { dtype: "int32" as const, shape: [1], data: new Int32Array([-7]) }],
    ]);
    const bytes = encodeSafetensors(tensors, { note: "hi" });
    const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(headerLength % 8).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
    expect(header["a.weight"]).toEqual({ dtype: "F32", shape: [2, 3], data_offsets: [0, 24] });
    expect(header.b).toEqual({ dtype: "I32", shape: [1], data_offsets: [24, 28] });
    expect(bytes.length).toBe(8 + headerLength + 28);

    const decoded = decodeSafetensors(bytes);
    expect(decoded.metadata).toEqual({ note: "hi" });
    expect(decoded.tensors.get("a.weight")).toEqual(tensors.get("a.weight"));
    expect(decoded.tensors.get("b")).toEqual(tensors.get("b"));
  });

  it("decodes from a Node Buffer that is a view into a larger pool, as files and Postgres return them", () => {
    const bytes = encodeSafetensors({
      w: { dtype: "float32", shape: [3], data: new Float32Array([1.5, -2, 3]) },
    });
    const pool = Buffer.alloc(bytes.length + 13);
    pool.set(bytes, 13);
    const view = pool.subarray(13); // byteOffset 13: unaligned for a Float32Array
    expect(Array.from(decodeSafetensors(view).tensors.get("w")?.data ?? [])).toEqual([1.5, -2, 3]);
  });

  it("widens half-precision tensors written by other tools to float32", () => {
    const header = JSON.stringify({
      h: { dtype: "F16", shape: [2], data_offsets: [0, 4] },
      g: { dtype: "BF16", shape: [1], data_offsets: [4, 6] },
    });
    const padded = header.padEnd(Math.ceil(header.length / 8) * 8, " ");
    const bytes = new Uint8Array(8 + padded.length + 6);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(padded.length), true);
    bytes.set(new TextEncoder().encode(padded), 8);
    const data = new DataView(bytes.buffer, 8 + padded.length);
    data.setUint16(0, 0x3c00, true); // 1.0 in f16
    data.setUint16(2, 0xc100, true); // -2.5 in f16
    data.setUint16(4, 0x4049, true); // 3.140625 in bf16
    const { tensors } = decodeSafetensors(bytes);
    expect(Array.from(tensors.get("h")?.data ?? [])).toEqual([1, -2.5]);
    expect(tensors.get("g")?.data[0]).toBeCloseTo(3.140625, 6);
  });

  it("rejects truncated or malformed files with a reason", () => {
    const good = encodeSafetensors({
      x: { dtype: "float32", shape: [4], data: new Float32Array(4) },
    });
    expect(() => decodeSafetensors(good.subarray(0, 5))).toThrow(/shorter than/);
    expect(() => decodeSafetensors(good.subarray(0, good.length - 4))).toThrow(
      /tensor x: data_offsets/,
    );
    const lying = good.slice();
    new DataView(lying.buffer).setBigUint64(0, 1n << 40n, true);
    expect(() => decodeSafetensors(lying)).toThrow(/header length/);
  });
});

describe("model checkpoints", () => {
  const untied: ModelConfig = {
    ...MODEL_PRESETS.tiny,
    tiedEmbeddings: false,
    norm: "rmsnorm",
    activation: "relu",
  };

  it("saves every weight under its Hugging Face GPT-2 name with the config, and loads an identical model", async () => {
    const model = new GPT(MODEL_PRESETS.tiny, 5);
    const bytes = await saveModel(model);
    const { tensors, metadata } = decodeSafetensors(bytes);
    expect(metadata.format).toBe("pt");
    expect(JSON.parse(metadata[MODEL_CONFIG_KEY])).toEqual(MODEL_PRESETS.tiny);
    expect(tensors.get("wte.weight")?.shape).toEqual([262, 64]);
    expect(tensors.get("wpe.weight")?.shape).toEqual([128, 64]);
    expect(tensors.get("h.0.attn.c_attn.weight")?.shape).toEqual([64, 192]); // Conv1D [in, out]
    expect(tensors.get("h.1.mlp.c_proj.weight")?.shape).toEqual([256, 64]);
    expect(tensors.get("ln_f.bias")?.shape).toEqual([64]);
    expect(tensors.has("lm_head.weight")).toBe(false); // tied to wte

    const loaded = await loadModel(bytes);
    expect([...loaded.namedWeights().keys()]).toEqual([...model.namedWeights().keys()]);
    for (const [name, w] of model.namedWeights()) {
      expect(Array.from(loaded.namedWeights().get(name)?.dataSync() ?? []), name).toEqual(
        Array.from(w.dataSync()),
      );
    }
    const ids = tf.tensor2d([[1, 2, 3]], [1, 3], "int32");
    const [a, b] = [model.forward(ids), loaded.forward(ids)];
    expect(Array.from(b.dataSync())).toEqual(Array.from(a.dataSync()));
    for (const t of [ids, a, b, model, loaded]) t.dispose();
  });

  it("round-trips an untied RMSNorm/ReLU model with its lm_head and no norm biases", async () => {
    const model = new GPT(untied, 2);
    const names = [...model.namedWeights().keys()];
    expect(names).toContain("lm_head.weight");
    expect(names).not.toContain("ln_f.bias");
    const loaded = await loadModel(await saveModel(model));
    expect(loaded.config).toEqual(untied);
    expect(Array.from(loaded.namedWeights().get("lm_head.weight")?.dataSync() ?? [])).toEqual(
      Array.from(model.namedWeights().get("lm_head.weight")?.dataSync() ?? []),
    );
    model.dispose();
    loaded.dispose();
  });

  it("refuses a checkpoint whose tensors do not fit the config", async () => {
    const model = new GPT(MODEL_PRESETS.tiny, 1);
    const { tensors, metadata } = decodeSafetensors(await saveModel(model));
    tensors.delete("h.1.ln_2.weight");
    await expect(loadModel(encodeSafetensors(tensors, metadata))).rejects.toThrow(
      /missing h.1.ln_2.weight/,
    );
    const wider = {
      ...metadata,
      [MODEL_CONFIG_KEY]: JSON.stringify({ ...MODEL_PRESETS.tiny, dModel: 32 }),
    };
    await expect(loadModel(encodeSafetensors(tensors, wider))).rejects.toThrow(/shape/);
    await expect(loadModel(encodeSafetensors(tensors, {}))).rejects.toThrow(/no model config/);
    const garbled = { ...metadata, [MODEL_CONFIG_KEY]: "{" };
    await expect(loadModel(encodeSafetensors(tensors, garbled))).rejects.toThrow(/not valid JSON/);
    const before = tf.memory().numTensors;
    await expect(loadModel(encodeSafetensors(tensors, metadata))).rejects.toThrow();
    expect(tf.memory().numTensors).toBe(before); // the half-built model was released
    model.dispose();
  });

  it("hashes bytes as lowercase hex SHA-256", () => {
    expect(sha256Hex(new TextEncoder().encode("abc"))).toBe(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
  });
});

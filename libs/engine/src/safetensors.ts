// The safetensors format (Hugging Face): 8-byte little-endian header length, a JSON header
// { name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__": { string: string } }
// padded with spaces to 8 bytes, then the raw little-endian tensor bytes.
// No maintained npm package covers encode and decode, and the format is this small.

export type TensorDtype = "float32" | "int32";

/** A tensor as plain data. */
export type StoredTensor = { dtype: TensorDtype; shape: number[]; data: Float32Array | Int32Array };

export type Safetensors = { tensors: Map<string, StoredTensor>; metadata: Record<string, string> };

const WRITE_DTYPES: Record<TensorDtype, string> = { float32: "F32", int32: "I32" };
/** Read dtypes: half precision (common in published checkpoints) is widened to float32. */
const READ_DTYPES: Record<string, { bytes: number; dtype: TensorDtype }> = {
  F32: { bytes: 4, dtype: "float32" },
  F16: { bytes: 2, dtype: "float32" },
  BF16: { bytes: 2, dtype: "float32" },
  I32: { bytes: 4, dtype: "int32" },
};

/** Tensors in the order given, with string metadata in __metadata__. */
export function encodeSafetensors(
  tensors: Map<string, StoredTensor> | Record<string, StoredTensor>,
  metadata: Record<string, string> = {},
): Uint8Array {
  const entries = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string")
        throw new Error(`safetensors metadata "${key}" must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === "__metadata__") throw new Error('"__metadata__" cannot name a tensor');
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new Error(
        `tensor ${name}: shape [${t.shape}] needs ${count} values, got ${t.data.length}`,
      );
    }
    header[name] = {
      dtype: WRITE_DTYPES[t.dtype],
      shape: t.shape,
      data_offsets: [offset, offset + t.data.byteLength],
    };
    offset += t.data.byteLength;
  }
  let headerBytes = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(headerBytes.length / 8) * 8;
  if (padded !== headerBytes.length) {
    const withSpaces = new Uint8Array(padded).fill(0x20);
    withSpaces.set(headerBytes);
    headerBytes = withSpaces;
  }
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let position = 8 + headerBytes.length;
  for (const [, t] of entries) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), position);
    position += t.data.byteLength;
  }
  return out;
}

/** Parses a safetensors file; throws an error saying what is malformed. */
export function decodeSafetensors(bytes: Uint8Array): Safetensors {
  if (bytes.length < 8)
    throw new Error("not a safetensors file: shorter than its 8-byte header length");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > bytes.length - 8) {
    throw new Error(
      `not a safetensors file: header length ${headerLength} exceeds the ${bytes.length} bytes`,
    );
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  } catch (err) {
    throw new Error(`not a safetensors file: header is not JSON (${(err as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new Error("not a safetensors file: header is not a JSON object");
  }
  const dataStart = 8 + headerLength;
  const dataLength = bytes.length - dataStart;
  const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
  const tensors = new Map<string, StoredTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const {
      dtype,
      shape,
      data_offsets: offsets,
    } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const read = READ_DTYPES[dtype];
    if (!read) throw new Error(`tensor ${name}: unsupported dtype ${dtype}`);
    if (!Array.isArray(shape) || !Array.isArray(offsets) || offsets.length !== 2) {
      throw new Error(`tensor ${name}: malformed header entry`);
    }
    const [begin, end] = offsets;
    const count = shape.reduce((a, b) => a * b, 1);
    if (!(begin >= 0 && end <= dataLength && end - begin === count * read.bytes)) {
      throw new Error(
        `tensor ${name}: data_offsets [${begin}, ${end}] do not fit shape [${shape}] ${dtype} in the file`,
      );
    }
    // A copy: aligned for typed arrays and independent of `bytes` (a Node Buffer's slice() would
    // share its pooled memory rather than copy).
    const raw = new Uint8Array(end - begin);
    raw.set(bytes.subarray(dataStart + begin, dataStart + end));
    tensors.set(name, {
      dtype: read.dtype,
      shape: [...shape],
      data: toTypedArray(dtype, raw.buffer, count),
    });
  }
  return { tensors, metadata };
}

function toTypedArray(
  dtype: string,
  buffer: ArrayBuffer,
  count: number,
): Float32Array | Int32Array {
  if (dtype === "F32") return new Float32Array(buffer, 0, count);
  if (dtype === "I32") return new Int32Array(buffer, 0, count);
  const halves = new Uint16Array(buffer, 0, count);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++)
    out[i] = dtype === "BF16" ? bf16ToFloat(halves[i]) : f16ToFloat(halves[i]);
  return out;
}

const scratch = new DataView(new ArrayBuffer(4));

function bf16ToFloat(bits: number): number {
  scratch.setUint32(0, bits << 16);
  return scratch.getFloat32(0);
}

function f16ToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

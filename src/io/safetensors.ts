/**
 * safetensors reader and writer (https://github.com/huggingface/safetensors format):
 * 8-byte little-endian header length N, N bytes of UTF-8 JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}`,
 * then the data buffer; offsets are relative to the start of the data buffer.
 * Writing is strict (sorted names, contiguous data, header padded with spaces to a multiple
 * of 8, `format: pt`); reading is lenient (any order, any padding) but checks every offset.
 */
import { readFile } from 'node:fs/promises';
import { KvtcError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'U16' | 'U32' | 'U64' | 'BOOL';

export const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, U16: 2, U32: 4, U64: 8, BOOL: 1,
};

export interface TensorEntry {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Raw little-endian bytes of the tensor (a view into the file buffer when read). */
  data: Uint8Array;
}

export interface SafetensorsFile {
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

const MAX_HEADER = 100 * 1024 * 1024;

function bad(message: string, source: string): KvtcError {
  return new KvtcError('SAFETENSORS_INVALID', `${source}: ${message}`, {
    fix: 'The file is truncated or is not a safetensors file: re-create it (e.g. re-run `kvtc capture`).',
    context: { file: source },
  });
}

/** Parses a safetensors buffer. `source` names the file in error messages. */
export function parseSafetensors(buf: Uint8Array, source = '<buffer>'): SafetensorsFile {
  if (buf.byteLength < 8) throw bad(`only ${buf.byteLength} bytes, shorter than the 8-byte header length`, source);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  if (n > MAX_HEADER || 8 + n > buf.byteLength) {
    throw bad(`header length ${n} does not fit in a file of ${buf.byteLength} bytes`, source);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch (e) {
    throw bad(`header is not valid UTF-8 JSON (${(e as Error).message})`, source);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw bad('header is not a JSON object', source);
  const data = buf.subarray(8 + n);
  const tensors = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (raw && typeof raw === 'object') {
        metadata = Object.fromEntries(Object.entries(raw as Record<string, unknown>).map(([k, v]) => [k, String(v)]));
      }
      continue;
    }
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e?.dtype !== 'string' || !(e.dtype in DTYPE_BYTES)) throw bad(`tensor "${name}" has unknown dtype ${JSON.stringify(e?.dtype)}`, source);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0)) throw bad(`tensor "${name}" has invalid shape`, source);
    if (!Array.isArray(e.data_offsets) || e.data_offsets.length !== 2) throw bad(`tensor "${name}" has invalid data_offsets`, source);
    const [b, end] = e.data_offsets as number[];
    const dtype = e.dtype as SafetensorsDtype;
    const count = (e.shape as number[]).reduce((a, d) => a * d, 1);
    if (!(Number.isInteger(b) && Number.isInteger(end) && b >= 0 && end >= b && end <= data.byteLength)) {
      throw bad(`tensor "${name}" data_offsets [${b}, ${end}] fall outside the ${data.byteLength}-byte data buffer (truncated file?)`, source);
    }
    if (end - b !== count * DTYPE_BYTES[dtype]) {
      throw bad(`tensor "${name}" has ${end - b} bytes but shape [${e.shape}] of ${dtype} needs ${count * DTYPE_BYTES[dtype]}`, source);
    }
    tensors.set(name, { dtype, shape: e.shape as number[], data: data.subarray(b, end) });
  }
  return { tensors, metadata };
}

export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (e) {
    throw new KvtcError('SAFETENSORS_INVALID', `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      fix: 'Check the path.',
      context: { file: path },
      cause: e,
    });
  }
  return parseSafetensors(new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), path);
}

/** Serializes tensors (sorted by name) with `format: pt` metadata. */
export function serializeSafetensors(tensors: Map<string, TensorEntry> | Record<string, TensorEntry>, metadata: Record<string, string> = {}): Uint8Array {
  const entries = (tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...metadata } };
  let offset = 0;
  for (const [name, t] of entries) {
    const count = t.shape.reduce((a, d) => a * d, 1);
    if (t.data.byteLength !== count * DTYPE_BYTES[t.dtype]) {
      throw new KvtcError('SAFETENSORS_INVALID', `tensor "${name}": ${t.data.byteLength} bytes do not match shape [${t.shape}] of ${t.dtype}`);
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  const enc = new TextEncoder();
  let hb = enc.encode(json);
  const pad = (8 - (hb.byteLength % 8)) % 8;
  if (pad) hb = enc.encode(json + ' '.repeat(pad));
  const out = new Uint8Array(8 + hb.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.byteLength), true);
  out.set(hb, 8);
  let pos = 8 + hb.byteLength;
  for (const [, t] of entries) {
    out.set(t.data, pos);
    pos += t.data.byteLength;
  }
  return out;
}

export async function writeSafetensors(path: string, tensors: Map<string, TensorEntry> | Record<string, TensorEntry>, metadata: Record<string, string> = {}): Promise<void> {
  await writeFileAtomic(path, serializeSafetensors(tensors, metadata));
}

/** Views a typed array's bytes (no copy). */
export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** F32 entry from a Float32Array. */
export function f32(data: Float32Array, shape: number[]): TensorEntry {
  return { dtype: 'F32', shape, data: bytesOf(data) };
}

/** Copies the entry's bytes into a fresh, aligned typed array of its dtype (F16 stays as Uint16 bits). */
export function toTypedArray(t: TensorEntry): Float32Array | Float64Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array | Int8Array {
  const copy = new Uint8Array(t.data.byteLength);
  copy.set(t.data);
  switch (t.dtype) {
    case 'F32': return new Float32Array(copy.buffer);
    case 'F64': return new Float64Array(copy.buffer);
    case 'F16': case 'BF16': case 'U16': return new Uint16Array(copy.buffer);
    case 'I32': return new Int32Array(copy.buffer);
    case 'I64': return new BigInt64Array(copy.buffer);
    case 'I8': return new Int8Array(copy.buffer);
    default: return copy;
  }
}

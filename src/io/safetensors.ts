// Tested by test/io/safetensors.test.ts (strict mode also by test/profile/invalid-profiles.test.ts and fuzz.test.ts).
/**
 * safetensors reader and writer (https://github.com/huggingface/safetensors format):
 * 8-byte little-endian header length N, N bytes of UTF-8 JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}`,
 * then the data buffer; offsets are relative to the start of the data buffer.
 * Writing is strict (sorted names, contiguous data, header padded with spaces to a multiple
 * of 8, `format: pt`); reading is lenient (any order, any padding) but checks every offset and
 * size, or strict (scanSafetensors' `strict`) for files kvtc specifies, as profiles.
 */
import { readFile } from 'node:fs/promises';
import { KvtcError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'U16' | 'U32' | 'U64' | 'BOOL';

export const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  U16: 2,
  U32: 4,
  U64: 8,
  BOOL: 1,
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

/** What strict mode adds, for files whose writer kvtc specifies (profiles, docs/profile-format.md §3). */
export interface StrictOptions {
  /** The most header bytes the caller's tensors can need (bounded before anything is parsed). */
  maxHeaderBytes: number;
  /** The only dtypes allowed (default: any safetensors dtype). */
  dtypes?: readonly SafetensorsDtype[];
}

export interface ScanResult extends SafetensorsFile {
  /** False when some tensor entry was reported as a problem (the header itself parsed). */
  sound: boolean;
}

const isSafeCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/**
 * The one safetensors parser: every reader calls it, lenient or strict. Both modes check the
 * header length against the file (and a bound), the header as UTF-8 JSON, each tensor's dtype,
 * shape, offsets within the data buffer and byte size = element count × dtype size (overflow
 * checked). Strict mode also requires a header length that is a multiple of 8, entries of exactly
 * {dtype, shape, data_offsets}, `__metadata__` a map of strings, only `strict.dtypes`, and data
 * contiguous from offset 0 to the end of the file (sorted by offset, no gap, overlap or trailing
 * byte). Each problem goes to `problem`, which may throw (the first stops the parse) or collect
 * (`kvtc validate` lists them all); returns undefined when the header itself cannot be read.
 */
export function scanSafetensors(buf: Uint8Array, problem: (message: string) => void, strict?: StrictOptions): ScanResult | undefined {
  if (buf.byteLength < 8) {
    problem(`only ${buf.byteLength} bytes, shorter than the 8-byte header length`);
    return undefined;
  }
  const maxHeader = strict ? strict.maxHeaderBytes : MAX_HEADER;
  const n64 = new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getBigUint64(0, true);
  if (n64 > BigInt(buf.byteLength - 8) || n64 > BigInt(maxHeader)) {
    problem(
      strict
        ? `header length ${n64} does not fit (file ${buf.byteLength} bytes, header at most ${maxHeader})`
        : `header length ${n64} does not fit in a file of ${buf.byteLength} bytes`,
    );
    return undefined;
  }
  const n = Number(n64);
  if (strict && n % 8 !== 0) {
    problem(`header length ${n} is not a multiple of 8 (the header is padded with spaces to one)`);
    return undefined;
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch (e) {
    problem(`header is not valid UTF-8 JSON (${(e as Error).message})${strict ? `; is the header length ${n} right?` : ''}`);
    return undefined;
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    problem('header is not a JSON object');
    return undefined;
  }
  const data = buf.subarray(8 + n);
  const dataLen = data.byteLength;
  const tensors = new Map<string, TensorEntry>();
  const spans = new Map<string, [number, number]>();
  let metadata: Record<string, string> = {};
  let sound = true;
  const broken = (message: string) => {
    sound = false;
    problem(message);
  };
  const allowed = strict?.dtypes ?? (Object.keys(DTYPE_BYTES) as SafetensorsDtype[]);
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      const isMap = typeof raw === 'object' && raw !== null && !Array.isArray(raw);
      if (strict && !(isMap && Object.values(raw).every((v) => typeof v === 'string'))) broken('__metadata__ is not an object of strings');
      else if (isMap) metadata = Object.fromEntries(Object.entries(raw as Record<string, unknown>).map(([k, v]) => [k, String(v)]));
      continue;
    }
    // The messages are the ones each mode's readers have always given (capture files: lenient,
    // profiles: strict, the same words as the Python reader's), so the tests pin them.
    const e = raw as Record<string, unknown> | null;
    const isEntry = typeof e === 'object' && e !== null && !Array.isArray(e);
    if (strict && !(isEntry && Object.keys(e).sort().join(',') === 'data_offsets,dtype,shape')) {
      broken(`tensor ${name}: entry must be exactly {dtype, shape, data_offsets}`);
      continue;
    }
    const dtypeRaw = isEntry ? e.dtype : undefined;
    const known = typeof dtypeRaw === 'string' && dtypeRaw in DTYPE_BYTES;
    if (!known || !allowed.includes(dtypeRaw as SafetensorsDtype)) {
      broken(
        strict
          ? `tensor ${name} has dtype ${JSON.stringify(dtypeRaw)}, expected ${allowed.join(' or ')}`
          : `tensor "${name}" has unknown dtype ${JSON.stringify(dtypeRaw)}`,
      );
      if (!known) continue;
    }
    const dtype = dtypeRaw as SafetensorsDtype;
    const shape = e!.shape;
    const offs = e!.data_offsets;
    if (!Array.isArray(shape) || !shape.every(isSafeCount)) {
      broken(strict ? `tensor ${name} has an invalid shape ${JSON.stringify(shape)}` : `tensor "${name}" has invalid shape`);
      continue;
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isSafeCount) || offs[1] < offs[0] || offs[1] > dataLen) {
      const listed = Array.isArray(offs) && offs.length === 2;
      broken(
        strict
          ? `tensor ${name} has data_offsets ${JSON.stringify(offs)} outside the ${dataLen}-byte data buffer`
          : listed
            ? `tensor "${name}" data_offsets [${offs[0]}, ${offs[1]}] fall outside the ${dataLen}-byte data buffer (truncated file?)`
            : `tensor "${name}" has invalid data_offsets`,
      );
      continue;
    }
    // Saturating: a product past 2^53 cannot equal any real byte count, so it is refused below.
    let elems = 1;
    for (const d of shape as number[]) elems = Math.min(elems * d, Number.MAX_SAFE_INTEGER);
    const need = Math.min(DTYPE_BYTES[dtype] * elems, Number.MAX_SAFE_INTEGER);
    if (offs[1] - offs[0] !== need) {
      broken(
        strict
          ? `tensor ${name} has ${offs[1] - offs[0]} bytes, but ${dtype}${JSON.stringify(shape)} needs ${need}`
          : `tensor "${name}" has ${offs[1] - offs[0]} bytes but shape [${shape}] of ${dtype} needs ${need}`,
      );
      continue;
    }
    tensors.set(name, { dtype, shape: shape as number[], data: data.subarray(offs[0], offs[1]) });
    spans.set(name, [offs[0], offs[1]]);
  }
  if (strict) {
    // Contiguous from 0 to the end of the file: no gaps, overlaps or trailing bytes.
    const sorted = [...spans.entries()].sort((a, b) => a[1][0] - b[1][0] || a[1][1] - b[1][1]);
    let at = 0;
    for (const [name, [begin, end]] of sorted) {
      if (begin !== at) {
        broken(`tensor ${name} starts at data offset ${begin}, but the previous tensor ends at ${at} (the data must be contiguous)`);
        break;
      }
      at = end;
    }
    if (sound && at !== dataLen) broken(`${dataLen - at} bytes after the last tensor's data (trailing bytes, or a wrong header length)`);
  }
  return { tensors, metadata, sound };
}

/**
 * Parses a safetensors buffer, throwing SAFETENSORS_INVALID at the first problem. `source` names
 * the file in error messages; `strict` as scanSafetensors.
 */
export function parseSafetensors(buf: Uint8Array, source = '<buffer>', strict?: StrictOptions): SafetensorsFile {
  const r = scanSafetensors(
    buf,
    (m) => {
      throw bad(m, source);
    },
    strict,
  )!;
  return { tensors: r.tensors, metadata: r.metadata };
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
export function serializeSafetensors(
  tensors: Map<string, TensorEntry> | Record<string, TensorEntry>,
  metadata: Record<string, string> = {},
): Uint8Array {
  const entries = (tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors)).sort(([a], [b]) =>
    a < b ? -1 : a > b ? 1 : 0,
  );
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...metadata } };
  let offset = 0;
  for (const [name, t] of entries) {
    const count = t.shape.reduce((a, d) => a * d, 1);
    if (t.data.byteLength !== count * DTYPE_BYTES[t.dtype]) {
      throw new KvtcError(
        'SAFETENSORS_INVALID',
        `tensor "${name}": ${t.data.byteLength} bytes do not match shape [${t.shape}] of ${t.dtype}`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  const json = JSON.stringify(header);
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

export async function writeSafetensors(
  path: string,
  tensors: Map<string, TensorEntry> | Record<string, TensorEntry>,
  metadata: Record<string, string> = {},
): Promise<void> {
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
export function toTypedArray(
  t: TensorEntry,
): Float32Array | Float64Array | Uint16Array | Int32Array | BigInt64Array | Uint8Array | Int8Array {
  const copy = new Uint8Array(t.data.byteLength);
  copy.set(t.data);
  switch (t.dtype) {
    case 'F32':
      return new Float32Array(copy.buffer);
    case 'F64':
      return new Float64Array(copy.buffer);
    case 'F16':
    case 'BF16':
    case 'U16':
      return new Uint16Array(copy.buffer);
    case 'I32':
      return new Int32Array(copy.buffer);
    case 'I64':
      return new BigInt64Array(copy.buffer);
    case 'I8':
      return new Int8Array(copy.buffer);
    default:
      return copy;
  }
}

// Tested by test/gguf/read.test.ts, test/gguf/quants.test.ts and test/gguf/fuzz.test.ts.
/**
 * GGUF reader (llama.cpp's model format, versions 2 and 3; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
 *
 * API (stable: the GGUF converters import these names):
 *   openGguf(path): Promise<GgufFile>        parses and validates the header; reads no tensor data
 *   file.version, file.alignment, file.dataStart, file.fileSize
 *   file.get(key) / file.has(key)             raw metadata value (64-bit ints as bigint, arrays as arrays)
 *   file.getString / getNumber / getInteger / getBool / getStringArray / getNumberArray (key, fallback?)
 *   file.getArray(key)                        any array: { itemType, values }
 *                                             typed: GGUF_INVALID naming the key when missing (and no
 *                                             fallback) or of another type
 *   file.tensors                              GgufTensorInfo[] in header order: name, ne, shape, type, byteSize…
 *   file.tensor(name) / file.hasTensor(name)  one tensor's info (GGUF_INVALID naming a missing tensor)
 *   readTensor(file, name): Promise<Float32Array>
 *                                             dequantized to float32 (F32, F16, BF16, F64, Q4_0, Q4_1,
 *                                             Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; others
 *                                             GGUF_UNSUPPORTED naming the type and this list)
 *   readTensorBytes(file, name): Promise<Uint8Array>   the stored bytes
 *
 * Element order: ggml's. ne[0] is the fastest-varying dimension, so the result is row-major with
 * shape `info.shape` = ne reversed, which is the PyTorch shape: element (i3, i2, i1, i0) lives at
 * i0 + ne0·(i1 + ne1·(i2 + ne2·i3)). A linear layer's `blk.0.attn_q.weight` with ne [hidden, q_dim]
 * comes back as PyTorch's [q_dim, hidden] weight, row by row. (llama.cpp's converter permutes the
 * Llama q/k rows for its RoPE layout; undoing that is the converter's business, not the reader's.)
 *
 * The file is untrusted: every count, length, dimension and offset is bounded by the file size and
 * by limits below before anything is allocated; tensor ranges must be aligned, inside the file and
 * disjoint. The header is read through a window of positional reads and tensor data on demand, so
 * a 250 MB model costs only its header until a tensor is read. Errors are KvtcError GGUF_INVALID
 * (malformed) or GGUF_UNSUPPORTED (v1, big-endian, nested arrays, types without a dequantizer).
 */
import { constants as bufferConstants } from 'node:buffer';
import { closeSync, fstatSync, openSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { KvtcError } from '../errors.js';
import { Cursor } from './cursor.js';
import { ggufInvalid, ggufUnsupported } from './errors.js';
import { GgufFile } from './file.js';
import { canDequantize, dequantize, DEQUANT_TYPES } from './quants.js';
import {
  GGML_MAX_DIMS,
  GGUF_VALUE_TYPES,
  ggmlTypeById,
  GGML_TYPES,
  type GgufEntry,
  type GgufTensorInfo,
  type GgufValue,
  type GgufValueType,
} from './types.js';

export { GgufFile } from './file.js';
export { DEQUANT_TYPES, dequantize } from './quants.js';
export type { GgmlTypeInfo, GgufEntry, GgufScalar, GgufTensorInfo, GgufValue, GgufValueType } from './types.js';

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
/** Limits beyond any real model, so a hostile count fails before a long loop or a big allocation. */
export const GGUF_LIMITS = {
  tensors: 1 << 20,
  keys: 1 << 20,
  arrayItems: 1 << 26,
  stringBytes: 1 << 26,
  keyBytes: 1 << 16,
  tensorNameBytes: 1 << 12,
  alignment: 1 << 24,
};
const DEFAULT_ALIGNMENT = 32;
/** Smallest on-disk size of one array item of each type: bounds an array's count by the bytes left. */
const ITEM_BYTES: Record<GgufValueType, number> = {
  UINT8: 1,
  INT8: 1,
  UINT16: 2,
  INT16: 2,
  UINT32: 4,
  INT32: 4,
  FLOAT32: 4,
  BOOL: 1,
  STRING: 8,
  ARRAY: 12,
  UINT64: 8,
  INT64: 8,
  FLOAT64: 8,
};

const RECREATE =
  'Re-create the GGUF with a current llama.cpp (convert_hf_to_gguf.py, llama-quantize), or convert the original Hugging Face checkpoint instead.';

function valueType(c: Cursor, what: string): GgufValueType {
  const at = c.pos;
  const id = c.u32(`type of ${what}`);
  const t = GGUF_VALUE_TYPES[id];
  if (t === undefined)
    throw ggufInvalid(c.path, `${what} has value type ${id} at offset ${at}, not a GGUF type (0-${GGUF_VALUE_TYPES.length - 1})`, {
      offset: at,
      type: id,
    });
  return t;
}

function scalar(c: Cursor, t: Exclude<GgufValueType, 'ARRAY'>, what: string): number | bigint | boolean | string {
  switch (t) {
    case 'UINT8':
      return c.u8(what);
    case 'INT8':
      return c.i8(what);
    case 'UINT16':
      return c.u16(what);
    case 'INT16':
      return c.i16(what);
    case 'UINT32':
      return c.u32(what);
    case 'INT32':
      return c.i32(what);
    case 'FLOAT32':
      return c.f32(what);
    case 'FLOAT64':
      return c.f64(what);
    case 'UINT64':
      return c.u64(what);
    case 'INT64':
      return c.i64(what);
    case 'STRING':
      return c.string(what, GGUF_LIMITS.stringBytes);
    case 'BOOL': {
      const at = c.pos;
      const b = c.u8(what);
      if (b > 1) throw ggufInvalid(c.path, `${what} is a BOOL of value ${b} at offset ${at}, not 0 or 1`, { offset: at });
      return b === 1;
    }
  }
}

function entry(c: Cursor, key: string): GgufEntry {
  const what = `metadata "${key}"`;
  const type = valueType(c, what);
  if (type !== 'ARRAY') return { type, value: scalar(c, type, what) };
  const itemType = valueType(c, `items of ${what}`);
  if (itemType === 'ARRAY') {
    throw ggufUnsupported(c.path, `${what} is an array of arrays, which kvtc does not read`, RECREATE, { key });
  }
  const max = Math.min(GGUF_LIMITS.arrayItems, Math.floor((c.remaining() - 8) / ITEM_BYTES[itemType]));
  const n = c.count(
    `item count of ${what}`,
    Math.max(0, max),
    max < GGUF_LIMITS.arrayItems ? 'the bytes left in the file hold' : 'the longest array kvtc reads',
  );
  const items: (number | bigint | boolean | string)[] = [];
  for (let i = 0; i < n; i++) items.push(scalar(c, itemType, what));
  return { type, itemType, value: items as GgufValue };
}

/** Parses `path`'s GGUF header and validates its tensor table; tensor data is read later, on demand. */
export async function openGguf(path: string): Promise<GgufFile> {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KvtcError(code === 'ENOENT' ? 'MODEL_NOT_FOUND' : 'IO_ERROR', `cannot open GGUF ${path}: ${code ?? (e as Error).message}`, {
      fix: code === 'ENOENT' ? 'Check the path of the .gguf file.' : 'Check that the file is readable.',
      context: { file: path },
      cause: e,
    });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw ggufInvalid(path, 'is not a regular file');
    return parse(new Cursor(fd, st.size, path));
  } finally {
    closeSync(fd);
  }
}

function parse(c: Cursor): GgufFile {
  const path = c.path;
  if (c.fileSize < 24) throw ggufInvalid(path, `only ${c.fileSize} bytes: a GGUF header takes at least 24`);
  const magic = c.u32('magic');
  if (magic !== MAGIC) {
    throw ggufInvalid(path, `does not start with the GGUF magic (found 0x${magic.toString(16).padStart(8, '0')}): not a GGUF file`, {
      magic,
    });
  }
  const version = c.u32('version');
  const swapped = (((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24)) >>> 0;
  if (version > 0xffff && swapped >= 1 && swapped <= 3) {
    throw ggufUnsupported(
      path,
      `is a big-endian GGUF (version ${swapped} byte-swapped); kvtc reads little-endian GGUF only`,
      'Use the little-endian GGUF of this model (the usual one; big-endian files are made for s390x).',
      { version: swapped },
    );
  }
  if (version === 1)
    throw ggufUnsupported(path, 'is GGUF version 1 (the 2023 draft format); kvtc reads versions 2 and 3', RECREATE, { version });
  if (version !== 2 && version !== 3)
    throw ggufUnsupported(
      path,
      `has GGUF version ${version}; kvtc reads versions 2 and 3`,
      'Re-create the GGUF with a llama.cpp release that writes version 3, or update kvtc.',
      { version },
    );

  // Each tensor info takes at least 4+8 (an empty name and n_dims) + 4+8 bytes; each key at least 8+4+1.
  const nTensors = c.count(
    'tensor count',
    Math.min(GGUF_LIMITS.tensors, Math.floor(c.remaining() / 24)),
    'the rest of the file can hold (truncated?)',
  );
  const nKeys = c.count(
    'metadata key count',
    Math.min(GGUF_LIMITS.keys, Math.floor(c.remaining() / 13)),
    'the rest of the file can hold (truncated?)',
  );

  const metadata = new Map<string, GgufEntry>();
  for (let i = 0; i < nKeys; i++) {
    const key = c.string(`metadata key ${i}`, GGUF_LIMITS.keyBytes);
    if (metadata.has(key)) throw ggufInvalid(path, `metadata key "${key}" appears twice`, { key });
    metadata.set(key, entry(c, key));
  }

  let alignment = DEFAULT_ALIGNMENT;
  const al = metadata.get('general.alignment');
  if (al) {
    const v = al.value;
    if (al.type !== 'UINT32' || typeof v !== 'number' || v === 0 || (v & (v - 1)) !== 0 || v > GGUF_LIMITS.alignment) {
      throw ggufInvalid(
        path,
        `general.alignment is ${al.type} ${String(v)}; it must be a UINT32 power of two up to ${GGUF_LIMITS.alignment}`,
        { alignment: String(v) },
      );
    }
    alignment = v;
  }

  const raw: { name: string; ne: number[]; typeId: number; offset: bigint; at: number }[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const at = c.pos;
    const name = c.string(`name of tensor ${i}`, GGUF_LIMITS.tensorNameBytes);
    if (names.has(name)) throw ggufInvalid(path, `tensor "${name}" appears twice`, { tensor: name });
    names.add(name);
    const nDims = c.u32(`n_dims of tensor "${name}"`);
    if (nDims > GGML_MAX_DIMS)
      throw ggufInvalid(path, `tensor "${name}" has ${nDims} dimensions; ggml allows at most ${GGML_MAX_DIMS}`, {
        tensor: name,
        n_dims: nDims,
      });
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const v = c.i64(`dimension ${d} of tensor "${name}"`);
      // A dimension beyond 8 elements per byte of the file cannot be backed by data (IQ1_S, the densest type, packs ~5).
      if (v < 0n || v > BigInt(c.fileSize) * 8n)
        throw ggufInvalid(path, `tensor "${name}" has dimension ${d} of ${v}, impossible in a file of ${c.fileSize} bytes`, {
          tensor: name,
          dim: v.toString(),
        });
      ne.push(Number(v));
    }
    const typeId = c.u32(`type of tensor "${name}"`);
    const offset = c.u64(`offset of tensor "${name}"`);
    raw.push({ name, ne, typeId, offset, at });
  }

  const dataStart = Math.ceil(c.pos / alignment) * alignment;
  if (dataStart > c.fileSize)
    throw ggufInvalid(path, `the data section would start at ${dataStart}, past the end of the ${c.fileSize}-byte file (truncated?)`);
  const dataBytes = c.fileSize - dataStart;

  const tensors: GgufTensorInfo[] = raw.map(({ name, ne, typeId, offset }) => {
    const type = ggmlTypeById(typeId);
    if (!type) {
      throw ggufInvalid(
        path,
        `tensor "${name}" has ggml type id ${typeId}, which is not a ggml type (known: ${GGML_TYPES.map((t) => `${t.id} ${t.name}`).join(', ')}; kvtc dequantizes ${DEQUANT_TYPES.join(', ')})`,
        { tensor: name, type: typeId },
      );
    }
    let elements = 1;
    for (const d of ne) elements *= d;
    if (!Number.isSafeInteger(elements))
      throw ggufInvalid(path, `tensor "${name}" of shape [${ne}] has more elements than any file holds`, { tensor: name });
    if (ne.length > 0 && ne[0] % type.blockSize !== 0) {
      throw ggufInvalid(
        path,
        `tensor "${name}" is ${type.name} with rows of ${ne[0]} elements, not a multiple of its block of ${type.blockSize}`,
        { tensor: name, ne0: ne[0] },
      );
    }
    if (ne.length === 0 && type.blockSize !== 1)
      throw ggufInvalid(path, `tensor "${name}" is a ${type.name} scalar; block types need a row of ${type.blockSize}`, { tensor: name });
    const byteSize = (elements / type.blockSize) * type.typeSize;
    if (offset % BigInt(alignment) !== 0n)
      throw ggufInvalid(path, `tensor "${name}" starts at data offset ${offset}, not a multiple of the alignment ${alignment}`, {
        tensor: name,
        offset: offset.toString(),
      });
    if (offset > BigInt(dataBytes) || byteSize > dataBytes - Number(offset)) {
      throw ggufInvalid(
        path,
        `tensor "${name}" (${type.name} [${ne}], ${byteSize} bytes at data offset ${offset}) runs past the end of the file's ${dataBytes}-byte data section (truncated?)`,
        { tensor: name, offset: offset.toString(), bytes: byteSize },
      );
    }
    const off = Number(offset);
    return { name, ne, shape: [...ne].reverse(), type, offset: off, fileOffset: dataStart + off, byteSize, elements };
  });

  const sorted = [...tensors].sort((a, b) => a.offset - b.offset || a.byteSize - b.byteSize);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1];
    const t = sorted[i];
    if (p.offset + p.byteSize > t.offset) {
      throw ggufInvalid(
        path,
        `tensors "${p.name}" (bytes ${p.offset}-${p.offset + p.byteSize}) and "${t.name}" (from ${t.offset}) overlap in the data section`,
        { tensors: [p.name, t.name] },
      );
    }
  }
  return new GgufFile(path, version, c.fileSize, alignment, dataStart, metadata, tensors);
}

/** The stored bytes of one tensor (positional read; the file must not have changed since openGguf). */
export async function readTensorBytes(file: GgufFile, name: string): Promise<Uint8Array> {
  const t = file.tensor(name);
  let fh;
  try {
    fh = await open(file.path, 'r');
  } catch (e) {
    throw new KvtcError('IO_ERROR', `cannot reopen GGUF ${file.path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, {
      fix: 'Check that the file still exists and is readable.',
      context: { file: file.path },
      cause: e,
    });
  }
  try {
    const size = (await fh.stat()).size;
    if (size !== file.fileSize)
      throw ggufInvalid(
        file.path,
        `changed size since it was opened (${file.fileSize} → ${size} bytes)`,
        {},
        'Do not modify the GGUF while kvtc reads it; run the command again.',
      );
    if (t.byteSize > bufferConstants.MAX_LENGTH)
      throw ggufUnsupported(
        file.path,
        `tensor "${name}" has ${t.byteSize} bytes, more than one Node buffer holds`,
        'Use a smaller model.',
        { tensor: name },
      );
    const buf = Buffer.allocUnsafe(t.byteSize);
    let got = 0;
    while (got < t.byteSize) {
      const { bytesRead } = await fh.read(buf, got, t.byteSize - got, t.fileOffset + got);
      if (bytesRead === 0) throw ggufInvalid(file.path, `ended while reading tensor "${name}" (the file shrank?)`, { tensor: name });
      got += bytesRead;
    }
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  } finally {
    await fh.close();
  }
}

/**
 * One tensor dequantized to float32, row-major in ggml order (shape `file.tensor(name).shape`,
 * the PyTorch shape; see the module comment). GGUF_UNSUPPORTED names a type kvtc cannot dequantize.
 */
export async function readTensor(file: GgufFile, name: string): Promise<Float32Array> {
  const t = file.tensor(name);
  if (!canDequantize(t.type)) {
    throw ggufUnsupported(
      file.path,
      `tensor "${name}" is ${t.type.name} (ggml type ${t.type.id}), which kvtc cannot dequantize; supported: ${DEQUANT_TYPES.join(', ')}`,
      `Re-quantize the model to one of those types (llama-quantize, e.g. Q8_0 or Q4_K_M), or convert the original Hugging Face checkpoint.`,
      { tensor: name, type: t.type.name },
    );
  }
  if (t.elements * 4 > bufferConstants.MAX_LENGTH) {
    throw ggufUnsupported(
      file.path,
      `tensor "${name}" has ${t.elements} elements, too many to hold as float32 in one array`,
      'Use a smaller model.',
      { tensor: name },
    );
  }
  return dequantize(t.type, await readTensorBytes(file, name), t.elements);
}

/**
 * A small GGUF writer for tests only: builds valid v2/v3 files (and, through `layout`, the byte
 * positions of every header field, so the fuzz test can aim at counts, lengths, dims and offsets).
 * Tensor data is passed as stored bytes; offsets are laid out in order with the file's alignment
 * unless a tensor gives its own.
 */
import { GGUF_VALUE_TYPES, ggmlTypeByName, type GgufValueType } from '../../src/gguf/types.js';

export type Meta =
  | { type: Exclude<GgufValueType, 'ARRAY' | 'STRING' | 'BOOL' | 'UINT64' | 'INT64'>; value: number }
  | { type: 'UINT64' | 'INT64'; value: bigint }
  | { type: 'BOOL'; value: boolean }
  | { type: 'STRING'; value: string }
  | { type: 'ARRAY'; itemType: Exclude<GgufValueType, 'ARRAY'>; value: (number | bigint | boolean | string)[] };

export const m = {
  u8: (value: number): Meta => ({ type: 'UINT8', value }),
  i8: (value: number): Meta => ({ type: 'INT8', value }),
  u16: (value: number): Meta => ({ type: 'UINT16', value }),
  i16: (value: number): Meta => ({ type: 'INT16', value }),
  u32: (value: number): Meta => ({ type: 'UINT32', value }),
  i32: (value: number): Meta => ({ type: 'INT32', value }),
  f32: (value: number): Meta => ({ type: 'FLOAT32', value }),
  f64: (value: number): Meta => ({ type: 'FLOAT64', value }),
  u64: (value: bigint): Meta => ({ type: 'UINT64', value }),
  i64: (value: bigint): Meta => ({ type: 'INT64', value }),
  bool: (value: boolean): Meta => ({ type: 'BOOL', value }),
  str: (value: string): Meta => ({ type: 'STRING', value }),
  arr: (itemType: Exclude<GgufValueType, 'ARRAY'>, value: (number | bigint | boolean | string)[]): Meta => ({
    type: 'ARRAY',
    itemType,
    value,
  }),
};

export interface TensorSpec {
  name: string;
  /** ggml dims, fastest first. */
  ne: number[];
  /** ggml type name, e.g. 'Q4_K'; or a raw id to write an unknown type. */
  type: string | number;
  data: Uint8Array;
  /** Data-section offset to write instead of the laid-out one. */
  offset?: bigint;
}

export interface GgufSpec {
  version?: number;
  /** Written as general.alignment when given (and used for layout); 32 otherwise. */
  alignment?: number;
  metadata?: [string, Meta][];
  tensors?: TensorSpec[];
}

/** Byte positions of header fields in the written file. */
export interface Layout {
  tensorCount: number;
  keyCount: number;
  keys: { key: string; lengthAt: number; typeAt: number; arrayCountAt?: number; itemTypeAt?: number }[];
  tensors: { name: string; nameLengthAt: number; nDimsAt: number; dimsAt: number[]; typeAt: number; offsetAt: number }[];
  dataStart: number;
}

class Bytes {
  parts: Uint8Array[] = [];
  size = 0;
  push(b: Uint8Array): number {
    const at = this.size;
    this.parts.push(b);
    this.size += b.length;
    return at;
  }
  num(kind: 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'f64', v: number): number {
    const n = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, f64: 8 }[kind];
    const dv = new DataView(new ArrayBuffer(n));
    ({
      u8: () => dv.setUint8(0, v),
      i8: () => dv.setInt8(0, v),
      u16: () => dv.setUint16(0, v, true),
      i16: () => dv.setInt16(0, v, true),
      u32: () => dv.setUint32(0, v, true),
      i32: () => dv.setInt32(0, v, true),
      f32: () => dv.setFloat32(0, v, true),
      f64: () => dv.setFloat64(0, v, true),
    })[kind]();
    return this.push(new Uint8Array(dv.buffer));
  }
  big(signed: boolean, v: bigint): number {
    const dv = new DataView(new ArrayBuffer(8));
    if (signed) dv.setBigInt64(0, v, true);
    else dv.setBigUint64(0, v, true);
    return this.push(new Uint8Array(dv.buffer));
  }
  str(s: string): number {
    const b = new TextEncoder().encode(s);
    const at = this.big(false, BigInt(b.length));
    this.push(b);
    return at;
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }
}

function scalar(w: Bytes, t: Exclude<GgufValueType, 'ARRAY'>, v: number | bigint | boolean | string): void {
  switch (t) {
    case 'STRING':
      w.str(v as string);
      break;
    case 'BOOL':
      w.num('u8', v ? 1 : 0);
      break;
    case 'UINT64':
      w.big(false, v as bigint);
      break;
    case 'INT64':
      w.big(true, v as bigint);
      break;
    default:
      w.num(
        ({ UINT8: 'u8', INT8: 'i8', UINT16: 'u16', INT16: 'i16', UINT32: 'u32', INT32: 'i32', FLOAT32: 'f32', FLOAT64: 'f64' } as const)[t],
        v as number,
      );
  }
}

const typeId = (t: GgufValueType) => GGUF_VALUE_TYPES.indexOf(t);

/** Stored byte size of a tensor of `type` and dims `ne`. */
export function tensorBytes(type: string, ne: number[]): number {
  const t = ggmlTypeByName(type);
  return (ne.reduce((a, d) => a * d, 1) / t.blockSize) * t.typeSize;
}

export function writeGguf(spec: GgufSpec): { bytes: Uint8Array; layout: Layout } {
  const alignment = spec.alignment ?? 32;
  const metadata: [string, Meta][] = [...(spec.metadata ?? [])];
  if (spec.alignment !== undefined) metadata.push(['general.alignment', m.u32(spec.alignment)]);
  const tensors = spec.tensors ?? [];
  const w = new Bytes();
  w.push(new TextEncoder().encode('GGUF'));
  w.num('u32', spec.version ?? 3);
  const tensorCount = w.big(false, BigInt(tensors.length));
  const keyCount = w.big(false, BigInt(metadata.length));
  const keys: Layout['keys'] = [];
  for (const [key, v] of metadata) {
    const lengthAt = w.str(key);
    const typeAt = w.num('u32', typeId(v.type));
    if (v.type === 'ARRAY') {
      const itemTypeAt = w.num('u32', typeId(v.itemType));
      const arrayCountAt = w.big(false, BigInt(v.value.length));
      for (const x of v.value) scalar(w, v.itemType, x);
      keys.push({ key, lengthAt, typeAt, itemTypeAt, arrayCountAt });
    } else {
      scalar(w, v.type, v.value);
      keys.push({ key, lengthAt, typeAt });
    }
  }
  const infos: Layout['tensors'] = [];
  let next = 0n;
  for (const t of tensors) {
    const nameLengthAt = w.str(t.name);
    const nDimsAt = w.num('u32', t.ne.length);
    const dimsAt = t.ne.map((d) => w.big(false, BigInt(d)));
    const typeAt = w.num('u32', typeof t.type === 'number' ? t.type : ggmlTypeByName(t.type).id);
    const offsetAt = w.big(false, t.offset ?? next);
    infos.push({ name: t.name, nameLengthAt, nDimsAt, dimsAt, typeAt, offsetAt });
    next += BigInt(Math.ceil(t.data.length / alignment) * alignment);
  }
  const dataStart = Math.ceil(w.size / alignment) * alignment;
  w.push(new Uint8Array(dataStart - w.size));
  let pos = 0n;
  for (const t of tensors) {
    const off = t.offset ?? pos;
    if (off > pos) {
      w.push(new Uint8Array(Number(off - pos)));
      pos = off;
    }
    if (off === pos) {
      w.push(t.data);
      pos += BigInt(t.data.length);
      const pad = Number(BigInt(Math.ceil(Number(pos) / alignment) * alignment) - pos);
      w.push(new Uint8Array(pad));
      pos += BigInt(pad);
    }
  }
  return { bytes: w.bytes(), layout: { tensorCount, keyCount, keys, tensors: infos, dataStart } };
}

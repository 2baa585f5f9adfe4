// Tested by test/gguf/read.test.ts.
/**
 * A parsed GGUF: header facts, metadata with typed accessors, and validated tensor infos.
 * Accessors throw GGUF_INVALID naming the key (and the type found) when a key a converter needs is
 * missing or of the wrong type; pass a fallback to make a key optional.
 */
import { ggufInvalid } from './errors.js';
import type { GgufEntry, GgufScalar, GgufTensorInfo, GgufValue, GgufValueType } from './types.js';

const NEEDS_FIX = 'The GGUF lacks metadata kvtc needs for this model: re-create it with a current llama.cpp convert_hf_to_gguf.py.';

const NUMERIC = new Set(['UINT8', 'INT8', 'UINT16', 'INT16', 'UINT32', 'INT32', 'FLOAT32', 'UINT64', 'INT64', 'FLOAT64']);

export class GgufFile {
  private readonly byName: Map<string, GgufTensorInfo>;

  constructor(
    readonly path: string,
    /** 2 or 3 (v3 only adds big-endian files, which kvtc refuses). */
    readonly version: number,
    readonly fileSize: number,
    /** `general.alignment`, default 32: every tensor offset is a multiple of it. */
    readonly alignment: number,
    /** Absolute file offset of the data section (the header end, padded to `alignment`). */
    readonly dataStart: number,
    readonly metadata: ReadonlyMap<string, GgufEntry>,
    /** In file header order. */
    readonly tensors: readonly GgufTensorInfo[],
  ) {
    this.byName = new Map(tensors.map((t) => [t.name, t]));
  }

  has(key: string): boolean {
    return this.metadata.has(key);
  }

  /** The raw value (64-bit integers as bigint, arrays as JS arrays), or undefined. */
  get(key: string): GgufValue | undefined {
    return this.metadata.get(key)?.value;
  }

  private entry(key: string, want: string): GgufEntry {
    const e = this.metadata.get(key);
    if (!e) throw ggufInvalid(this.path, `metadata key "${key}" is missing (${want} expected)`, { key }, NEEDS_FIX);
    return e;
  }

  private wrongType(key: string, e: GgufEntry, want: string) {
    const found = e.type === 'ARRAY' ? `ARRAY of ${e.itemType}` : e.type;
    return ggufInvalid(this.path, `metadata key "${key}" is ${found}, expected ${want}`, { key, type: found }, NEEDS_FIX);
  }

  getString(key: string, fallback?: string): string {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const e = this.entry(key, 'a string');
    if (e.type !== 'STRING') throw this.wrongType(key, e, 'a string');
    return e.value as string;
  }

  getBool(key: string, fallback?: boolean): boolean {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const e = this.entry(key, 'a bool');
    if (e.type !== 'BOOL') throw this.wrongType(key, e, 'a bool');
    return e.value as boolean;
  }

  /** Any numeric type; a 64-bit integer beyond 2^53 is refused rather than rounded. */
  getNumber(key: string, fallback?: number): number {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const e = this.entry(key, 'a number');
    if (!NUMERIC.has(e.type)) throw this.wrongType(key, e, 'a number');
    return this.safe(key, e.value as number | bigint);
  }

  /** A numeric value that must be a whole number (counts, sizes). */
  getInteger(key: string, fallback?: number): number {
    const v = this.getNumber(key, fallback);
    if (!Number.isInteger(v))
      throw ggufInvalid(this.path, `metadata key "${key}" is ${v}, expected a whole number`, { key, value: v }, NEEDS_FIX);
    return v;
  }

  getStringArray(key: string, fallback?: string[]): string[] {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const e = this.entry(key, 'an array of strings');
    if (e.type !== 'ARRAY' || e.itemType !== 'STRING') throw this.wrongType(key, e, 'an array of strings');
    return e.value as string[];
  }

  /** An array of any numeric type, as numbers (per-layer head counts, token scores, token types). */
  getNumberArray(key: string, fallback?: number[]): number[] {
    if (fallback !== undefined && !this.has(key)) return fallback;
    const e = this.entry(key, 'an array of numbers');
    if (e.type !== 'ARRAY' || !NUMERIC.has(e.itemType ?? '')) throw this.wrongType(key, e, 'an array of numbers');
    const v = e.value as number[] | bigint[];
    return typeof v[0] === 'bigint' ? (v as bigint[]).map((x) => this.safe(key, x)) : (v as number[]);
  }

  /** Any array with its item type (GGUF arrays are homogeneous; 64-bit items are bigint). */
  getArray(key: string): { itemType: GgufValueType; values: readonly GgufScalar[] } {
    const e = this.entry(key, 'an array');
    if (e.type !== 'ARRAY' || !e.itemType) throw this.wrongType(key, e, 'an array');
    return { itemType: e.itemType, values: e.value as GgufScalar[] };
  }

  private safe(key: string, v: number | bigint): number {
    if (typeof v === 'number') return v;
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) {
      throw ggufInvalid(
        this.path,
        `metadata key "${key}" is ${v}, beyond the integers kvtc can hold exactly (2^53)`,
        { key, value: v.toString() },
        NEEDS_FIX,
      );
    }
    return Number(v);
  }

  hasTensor(name: string): boolean {
    return this.byName.has(name);
  }

  /** The tensor's info; GGUF_INVALID naming it when the file has no such tensor. */
  tensor(name: string): GgufTensorInfo {
    const t = this.byName.get(name);
    if (!t)
      throw ggufInvalid(
        this.path,
        `tensor "${name}" is not in the file (it has ${this.tensors.length} tensors)`,
        { tensor: name },
        NEEDS_FIX,
      );
    return t;
  }
}

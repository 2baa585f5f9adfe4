// KV files whose value heads have another width than the key heads (MLA latents, profile format 3)
// and BF16 files (the dtype of most GPU dumps), read as float32.
import { describe, expect, it } from 'vitest';
import { bytesOf, serializeSafetensors, type TensorEntry } from '../../src/io/safetensors.js';
import { floatToHalf, halfToFloat } from '../../src/io/fp16.js';
import { parseKvCache, serializeKvCache } from '../../src/model/kv-io.js';
import type { KvCache, KvDtype } from '../../src/model/types.js';
import { rng } from '../codec/rng.js';

function mlaCache(dtype: KvDtype, tokens = 6): KvCache {
  const { normal } = rng(5);
  const mk = (d: number) =>
    Array.from({ length: 2 }, () => {
      const a = Float32Array.from({ length: tokens * d }, () => normal());
      return dtype === 'float16' ? a.map((v) => halfToFloat(floatToHalf(v))) : a;
    });
  return { layers: 2, kvHeads: 1, headDim: 4, valueDim: 12, tokens, dtype, startPosition: 3, keys: mk(4), values: mk(12) };
}

/** float32 → bfloat16 bits, truncating (the test values are chosen bf16-exact). */
const bf16 = (a: Float32Array) => {
  const u = new Uint32Array(a.buffer.slice(0));
  return Uint16Array.from(u, (x) => x >>> 16);
};

describe('kv-io: value heads of another width, BF16', () => {
  it.each(['float32', 'float16'] as const)('a %s cache with values 12 wide and keys 4 round-trips exactly', (dtype) => {
    const c = mlaCache(dtype);
    const { cache, metadata } = parseKvCache(serializeKvCache(c));
    expect(cache).toEqual(c);
    expect(metadata).toMatchObject({ head_dim: '4', value_head_dim: '12' });
  });

  it('a cache whose values are as wide as its keys records no value_head_dim and has no valueDim', () => {
    const c = mlaCache('float32');
    const same = { ...c, valueDim: undefined, values: c.keys };
    delete same.valueDim;
    const { cache, metadata } = parseKvCache(serializeKvCache(same));
    expect(cache.valueDim).toBeUndefined();
    expect(metadata.value_head_dim).toBeUndefined();
  });

  it('value tensors of different widths, or heads and tokens other than the keys, are refused naming the tensor', () => {
    const t = (shape: number[]): TensorEntry => ({
      dtype: 'F32',
      shape,
      data: bytesOf(new Float32Array(shape.reduce((a, b) => a * b, 1))),
    });
    const file = (v1: number[]) =>
      serializeSafetensors({
        'present.0.key': t([1, 1, 6, 4]),
        'present.0.value': t([1, 1, 6, 12]),
        'present.1.key': t([1, 1, 6, 4]),
        'present.1.value': t(v1),
      });
    expect(() => parseKvCache(file([1, 1, 6, 8]))).toThrow(/present\.1\.value has shape \[1,1,6,8\], expected \[1,1,6,12\]/);
    expect(() => parseKvCache(file([1, 1, 5, 12]))).toThrow(/present\.1\.value has shape/);
    const bad = serializeSafetensors({ 'present.0.key': t([1, 1, 6, 4]), 'present.0.value': t([1, 2, 6, 12]) });
    expect(() => parseKvCache(bad)).toThrow(/present\.0\.value has shape \[1,2,6,12\]; expected \[1, 1, 6, value_head_dim\]/);
    expect(() =>
      parseKvCache(
        serializeSafetensors(
          Object.fromEntries(
            [0, 1].flatMap((l) => [
              [`present.${l}.key`, t([1, 1, 6, 4])],
              [`present.${l}.value`, t([1, 1, 6, 12])],
            ]),
          ),
          { value_head_dim: '16' },
        ),
      ),
    ).toThrow(/metadata says value_head_dim 16 but the value tensors have 12/);
  });

  it('BF16 tensors read as float32, exactly', () => {
    const c = mlaCache('float32');
    // bf16-exact values: float32s whose low 16 bits are zero
    const exact = (a: Float32Array) =>
      new Float32Array(Uint32Array.from(new Uint32Array(a.buffer.slice(0)), (x) => (x & 0xffff0000) >>> 0).buffer);
    const keys = c.keys.map(exact);
    const values = c.values.map(exact);
    const tensors: Record<string, TensorEntry> = {};
    for (let l = 0; l < 2; l++) {
      tensors[`present.${l}.key`] = { dtype: 'BF16', shape: [1, 1, 6, 4], data: bytesOf(bf16(keys[l])) };
      tensors[`present.${l}.value`] = { dtype: 'BF16', shape: [1, 1, 6, 12], data: bytesOf(bf16(values[l])) };
    }
    const { cache } = parseKvCache(serializeSafetensors(tensors, { start_position: '3' }));
    expect(cache.dtype).toBe('float32');
    expect(cache.keys).toEqual(keys);
    expect(cache.values).toEqual(values);
    expect(cache.valueDim).toBe(12);
    expect(keys[0].some((v, i) => v !== c.keys[0][i])).toBe(true); // the test values did lose bits to bf16
  });
});

describe("kv-io: a format-3 profile's cache layers read by model layer or in the profile's order", () => {
  /** The cache `c` saved with its layers named `ids` (as a KV dump names them by model layer). */
  const named = (c: KvCache, ids: number[]) => {
    const tensors = new Map<string, TensorEntry>();
    ids.forEach((id, l) => {
      tensors.set(`present.${id}.key`, { dtype: 'F32', shape: [1, 1, c.tokens, c.headDim], data: bytesOf(c.keys[l]) });
      tensors.set(`present.${id}.value`, { dtype: 'F32', shape: [1, 1, c.tokens, c.valueDim!], data: bytesOf(c.values[l]) });
    });
    return serializeSafetensors(tensors, { start_position: String(c.startPosition) });
  };

  it('a file named by model layer (a dump) and one in the profile order (kvtc decode) read the same cache', () => {
    const c = mlaCache('float32');
    expect(parseKvCache(named(c, [1, 3]), 'dump', [1, 3]).cache).toEqual(c);
    expect(parseKvCache(serializeKvCache(c), 'decoded', [1, 3]).cache).toEqual(c);
  });

  it("a whole-model file read for one pipeline stage's layers takes those layers", () => {
    const c = mlaCache('float32');
    const other = mlaCache('float32');
    const whole = {
      ...c,
      layers: 4,
      keys: [other.keys[0], c.keys[0], other.keys[1], c.keys[1]],
      values: [other.values[0], c.values[0], other.values[1], c.values[1]],
    };
    expect(parseKvCache(serializeKvCache(whole), 'whole', [1, 3]).cache).toEqual(c);
  });

  it('a file with neither naming is refused, naming what it has and what the profile needs', () => {
    const c = mlaCache('float32');
    expect(() => parseKvCache(named(c, [0, 2]), 'odd.safetensors', [1, 3])).toThrow(
      /odd\.safetensors: the file's layers are present\.\{0,2\}; the profile's cache layers are model layers 1,3/,
    );
  });
});

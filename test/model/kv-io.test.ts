import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { floatToHalf, halfToFloat } from '../../src/io/fp16.js';
import { parseSafetensors, serializeSafetensors } from '../../src/io/safetensors.js';
import { kvCacheFromSafetensors, parseKvCache, readKvCache, serializeKvCache, writeKvCache } from '../../src/model/kv-io.js';
import type { KvCache, KvDtype } from '../../src/model/types.js';

function randomCache(dtype: KvDtype, layers = 3, kvHeads = 2, tokens = 5, headDim = 4): KvCache {
  let s = 1;
  const rnd = () => ((s = (s * 16807) % 2147483647) / 2147483647) * 4 - 2;
  const mk = () => {
    const a = Float32Array.from({ length: kvHeads * tokens * headDim }, rnd);
    // fp16 caches hold fp16-representable values, as the model produced them
    return dtype === 'float16' ? a.map((v) => halfToFloat(floatToHalf(v))) : a;
  };
  return {
    layers,
    kvHeads,
    headDim,
    tokens,
    dtype,
    startPosition: 7,
    keys: Array.from({ length: layers }, mk),
    values: Array.from({ length: layers }, mk),
  };
}

describe('kv-io', () => {
  it.each(['float16', 'float32'] as const)('round-trips a %s cache exactly through a file', async (dtype) => {
    const c = randomCache(dtype);
    const p = join(mkdtempSync(join(tmpdir(), 'kvtc-kv-')), 'kv.safetensors');
    const bytes = await writeKvCache(p, c, { model: 'm', fingerprint: 'abc' });
    const { cache, metadata } = await readKvCache(p);
    expect(cache).toEqual(c);
    expect(metadata).toMatchObject({
      producer: 'kvtc',
      model: 'm',
      fingerprint: 'abc',
      tokens: '5',
      start_position: '7',
      layers: '3',
      kv_heads: '2',
      head_dim: '4',
      dtype,
      format: 'pt',
    });
    const f = parseSafetensors(serializeKvCache(c));
    expect(f.tensors.get('present.2.value')).toMatchObject({ dtype: dtype === 'float16' ? 'F16' : 'F32', shape: [1, 2, 5, 4] });
    // data: layers * 2 tensors * elements * bytes per element, plus a header
    expect(bytes).toBeGreaterThan(3 * 2 * 40 * (dtype === 'float16' ? 2 : 4));
  });

  it.each([NaN, Infinity])('rejects %s, naming the tensor and index', (bad) => {
    const c = randomCache('float32');
    c.values[1][13] = bad;
    expect(() => parseKvCache(serializeKvCache(c), 'kv.safetensors')).toThrow(
      /kv\.safetensors: present\.1\.value has a non-finite value \((NaN|Infinity)\) at index 13 \(head 0, token 3, dim 1\)/,
    );
  });

  it('rejects mismatched shapes and missing values', () => {
    const c = randomCache('float32');
    const f = parseSafetensors(serializeKvCache(c));
    const v = f.tensors.get('present.1.value')!;
    f.tensors.set('present.1.value', { ...v, shape: [1, 2, 4, 5] });
    expect(() => kvCacheFromSafetensors(f, 'x')).toThrow(/present\.1\.value has shape \[1,2,4,5\], expected \[1,2,5,4\]/);
    f.tensors.delete('present.1.value');
    expect(() => kvCacheFromSafetensors(parseSafetensors(serializeSafetensors(f.tensors)), 'x')).toThrow(/missing present\.1\.value/);
    expect(() => kvCacheFromSafetensors({ tensors: new Map(), metadata: {} }, 'x')).toThrow(/no tensor named present\.0\.key/);
  });
});

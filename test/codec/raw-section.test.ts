import { describe, expect, it } from 'vitest';
import { rawSection, restoreRaw } from '../../src/codec/raw-section.js';
import { halfToFloat, floatToHalf } from '../../src/io/fp16.js';
import type { KvCache } from '../../src/model/types.js';

function cache(dtype: KvCache['dtype'], f: (i: number) => number): KvCache {
  const layers = 2,
    kvHeads = 2,
    headDim = 4,
    tokens = 9;
  const n = kvHeads * tokens * headDim;
  let k = 0;
  const arr = () => Float32Array.from({ length: n }, () => f(k++));
  return { layers, kvHeads, headDim, tokens, dtype, startPosition: 0, keys: [arr(), arr()], values: [arr(), arr()] };
}
const empty = (c: KvCache): KvCache => ({
  ...c,
  keys: c.keys.map((a) => new Float32Array(a.length)),
  values: c.values.map((a) => new Float32Array(a.length)),
});
const half = (x: number) => halfToFloat(floatToHalf(x));

describe('raw section', () => {
  it('round-trips the sink and window tokens as fp16 and leaves the middle alone', () => {
    const c = cache('float32', (i) => Math.sin(i) * 3);
    const raw = rawSection(c, 2, 3, 'test');
    expect(raw.float32).toBe(false);
    expect(raw.data.byteLength).toBe(2 * 2 * 2 * (2 + 3) * 4 * 2);
    const back = empty(c);
    restoreRaw(raw.data, back, 2, 3, false, 'test');
    for (const kind of ['keys', 'values'] as const) {
      for (let l = 0; l < 2; l++) {
        for (let h = 0; h < 2; h++) {
          for (let t = 0; t < 9; t++) {
            for (let d = 0; d < 4; d++) {
              const i = (h * 9 + t) * 4 + d;
              const kept = t < 2 || t >= 9 - 3;
              expect(back[kind][l][i]).toBe(kept ? half(c[kind][l][i]) : 0);
            }
          }
        }
      }
    }
  });

  it('a float32 cache with a raw value fp16 cannot hold is stored losslessly as float32', () => {
    const c = cache('float32', (i) => (i === 1 ? 1e6 : i / 7));
    const raw = rawSection(c, 2, 3, 'test');
    expect(raw.float32).toBe(true);
    const back = empty(c);
    restoreRaw(raw.data, back, 2, 3, true, 'test');
    expect(back.keys[0][1]).toBe(1e6);
    expect(back.keys[0][2]).toBe(Math.fround(2 / 7));
  });

  it('refuses a non-finite value (KV_INVALID) and a float16 cache holding a value beyond fp16 (KV_OUT_OF_RANGE)', () => {
    expect(() =>
      rawSection(
        cache('float32', (i) => (i === 3 ? NaN : 0)),
        2,
        3,
        'test',
      ),
    ).toThrow(expect.objectContaining({ code: 'KV_INVALID' }));
    expect(() =>
      rawSection(
        cache('float16', (i) => (i === 3 ? 1e6 : 0)),
        2,
        3,
        'test',
      ),
    ).toThrow(expect.objectContaining({ code: 'KV_OUT_OF_RANGE' }));
  });

  it('restoring a non-finite stored value is BLOB_INVALID', () => {
    const c = cache('float32', () => 1);
    const raw = rawSection(c, 2, 3, 'test');
    new Uint16Array(raw.data.buffer, raw.data.byteOffset)[5] = 0x7c00;
    expect(() => restoreRaw(raw.data, empty(c), 2, 3, false, 'blob')).toThrow(expect.objectContaining({ code: 'BLOB_INVALID' }));
  });
});

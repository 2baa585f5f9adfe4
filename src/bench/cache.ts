// Tested by test/bench/bench.test.ts.
/** KvCache helpers for the bench: prefixes, byte counts, reconstruction error. */
import { fp16BytesPerToken } from '../codec/blob.js';
import { floatToHalf } from '../io/fp16.js';
import type { KvCache } from '../model/types.js';

/** fp16 bytes of a cache: the unit every ratio and MB/s figure is measured in. */
export function fp16Bytes(c: Pick<KvCache, 'layers' | 'kvHeads' | 'headDim' | 'tokens'>): number {
  return fp16BytesPerToken(c) * c.tokens;
}

/** The cache of the first `tokens` tokens (a causal model's cache of a prefix is a prefix of its cache). */
export function prefixCache(c: KvCache, tokens: number): KvCache {
  if (tokens === c.tokens) return c;
  const cut = (a: Float32Array) => {
    const out = new Float32Array(c.kvHeads * tokens * c.headDim);
    for (let h = 0; h < c.kvHeads; h++)
      out.set(a.subarray(h * c.tokens * c.headDim, (h * c.tokens + tokens) * c.headDim), h * tokens * c.headDim);
    return out;
  };
  return { ...c, tokens, keys: c.keys.map(cut), values: c.values.map(cut) };
}

/** The raw cache as fp16 bytes, layer by layer, keys then values: what zlib and memcpy are timed on. */
export function rawFp16(c: KvCache): Uint8Array {
  const h = new Uint16Array(fp16Bytes(c) / 2);
  let k = 0;
  for (let l = 0; l < c.layers; l++) {
    for (const a of [c.keys[l], c.values[l]]) for (let i = 0; i < a.length; i++) h[k++] = floatToHalf(a[i]);
  }
  return new Uint8Array(h.buffer);
}

/** ‖x̂ − x‖ / ‖x‖ over all tokens, keys and values separately. */
export function relativeError(ref: KvCache, got: KvCache): { key: number; value: number } {
  const rel = (a: Float32Array[], b: Float32Array[]) => {
    let num = 0;
    let den = 0;
    for (let l = 0; l < a.length; l++) {
      const x = a[l];
      const y = b[l];
      for (let i = 0; i < x.length; i++) {
        const d = y[i] - x[i];
        num += d * d;
        den += x[i] * x[i];
      }
    }
    return Math.sqrt(num / Math.max(den, 1e-30));
  };
  return { key: rel(ref.keys, got.keys), value: rel(ref.values, got.values) };
}

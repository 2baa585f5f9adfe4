import { ropeInvFreq } from '../../src/rope/freqs.js';
import type { KvCache, RopeSpec } from '../../src/model/types.js';

/** Layer-0 key of (head, token) with RoPE undone per `rope`: Float64Array // [headDim] */
export function unrotatedKey(cache: KvCache, rope: RopeSpec, head: number, token: number): Float64Array {
  const d = cache.headDim;
  const k = cache.keys[0].subarray((head * cache.tokens + token) * d, (head * cache.tokens + token + 1) * d);
  const out = Float64Array.from(k);
  const inv = ropeInvFreq(rope);
  const pos = cache.startPosition + token;
  for (let i = 0; i < inv.length; i++) {
    const [a, b] = rope.layout === 'half' ? [i, i + rope.rotaryDim / 2] : [2 * i, 2 * i + 1];
    const c = Math.cos(pos * inv[i]);
    const s = Math.sin(pos * inv[i]);
    out[a] = k[a] * c + k[b] * s;
    out[b] = k[b] * c - k[a] * s;
  }
  return out;
}

/**
 * Layer 0's key depends only on the token and its position, so the same token at two
 * positions must give the same key once RoPE is undone: a check of layout and theta.
 * Returns the largest relative difference over all heads.
 */
export function ropeConsistency(cache: KvCache, rope: RopeSpec, t1: number, t2: number): number {
  let worst = 0;
  for (let h = 0; h < cache.kvHeads; h++) {
    const a = unrotatedKey(cache, rope, h, t1);
    const b = unrotatedKey(cache, rope, h, t2);
    let num = 0;
    let den = 0;
    for (let i = 0; i < a.length; i++) {
      num = Math.max(num, Math.abs(a[i] - b[i]));
      den = Math.max(den, Math.abs(a[i]));
    }
    worst = Math.max(worst, num / den);
  }
  return worst;
}

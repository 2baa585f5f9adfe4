import { describe, expect, it } from 'vitest';
import { ropeTables } from '../../src/codec/graphs.js';
import { gatherHeads, hostRope, saturateHalf, scatterHeads } from '../../src/codec/host-kernels.js';
import { ropeInvFreq } from '../../src/rope/freqs.js';
import type { RopeSpec } from '../../src/model/types.js';

const kvHeads = 2,
  headDim = 8,
  tokens = 12,
  t0 = 3,
  n = 6;
const layer = () => Float32Array.from({ length: kvHeads * tokens * headDim }, (_, i) => Math.cos(i * 0.37) * 2);

describe('host kernels', () => {
  it("gatherHeads copies [G, n, headDim] head runs and sums each token's squares; scatterHeads writes them back", () => {
    const src = [layer(), layer()];
    const x = new Float32Array(2 * kvHeads * n * headDim);
    const norms = new Float64Array(n);
    gatherHeads(src, [0, 1], kvHeads, headDim, tokens, t0, n, x, undefined, norms);
    for (let k = 0; k < n; k++) {
      let q = 0;
      for (const a of src)
        for (let h = 0; h < kvHeads; h++) for (let d = 0; d < headDim; d++) q += a[(h * tokens + t0 + k) * headDim + d] ** 2;
      expect(norms[k]).toBeCloseTo(q, 10);
    }
    const dst = [new Float32Array(src[0].length), new Float32Array(src[1].length)];
    scatterHeads(x, dst, [0, 1], kvHeads, headDim, tokens, t0, n);
    for (let l = 0; l < 2; l++)
      for (let h = 0; h < kvHeads; h++) {
        const s = (h * tokens + t0) * headDim;
        expect(dst[l].subarray(s, s + n * headDim)).toEqual(src[l].subarray(s, s + n * headDim));
      }
  });

  for (const layout of ['half', 'interleaved'] as const) {
    it(`un-rotating keys on gather and re-rotating on scatter gives the keys back, and keeps the norms (${layout})`, () => {
      const rope: RopeSpec = { theta: 10000, rotaryDim: headDim, layout };
      const r = hostRope(rope, headDim, ropeTables(ropeInvFreq(rope), t0, n));
      const src = [layer()];
      const x = new Float32Array(kvHeads * n * headDim);
      const norms = new Float64Array(n);
      gatherHeads(src, [0], kvHeads, headDim, tokens, t0, n, x, r, norms);
      const plain = new Float32Array(x.length);
      gatherHeads(src, [0], kvHeads, headDim, tokens, t0, n, plain, undefined, new Float64Array(n));
      expect(x).not.toEqual(plain);
      const dst = [new Float32Array(src[0].length)];
      scatterHeads(x, dst, [0], kvHeads, headDim, tokens, t0, n, r);
      for (let h = 0; h < kvHeads; h++) {
        for (let i = (h * tokens + t0) * headDim; i < (h * tokens + t0 + n) * headDim; i++) expect(dst[0][i]).toBeCloseTo(src[0][i], 5);
      }
      let q = 0;
      for (let i = 0; i < x.length; i++) q += x[i] ** 2;
      expect(norms.reduce((a, b) => a + b, 0)).toBeCloseTo(q, 3);
    });
  }

  it('saturateHalf clamps only the given tokens to ±65504', () => {
    const a = Float32Array.from({ length: kvHeads * tokens * headDim }, (_, i) => (i % 2 ? 1e6 : -1e6));
    saturateHalf(a, kvHeads, tokens, headDim, t0, n);
    for (let h = 0; h < kvHeads; h++)
      for (let t = 0; t < tokens; t++) {
        const v = a[(h * tokens + t) * headDim + 1];
        expect(v).toBe(t >= t0 && t < t0 + n ? 65504 : 1e6);
      }
  });
});

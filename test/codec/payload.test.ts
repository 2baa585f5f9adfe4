/**
 * The codec's payload coder works on stored components, component-major [k, n], with fused
 * loops; quant.ts's quantizeGroup/dequantizeGroup are the plain token-major reference.
 * Both must give the same codes, bytes and values.
 */
import { describe, expect, it } from 'vitest';
import { packCodes, unpackCodes } from '../../src/codec/pack.js';
import { decodePlanPayload } from './payload-reference.js';
import { encodePlanPayload, payloadLength, storedComponents, toStoredComponentMajor } from '../../src/codec/payload.js';
import type { StoredType } from '../../src/codec/quant.js';
import { fitStaticRange } from '../../src/fit/static-range.js';
import { dequantizeGroup, quantizeGroup } from './quant-reference.js';
import { TYPE_BITS, type BasisPlan, type QuantGroup } from '../../src/codec/types.js';
import { rng } from './rng.js';

const r = 20;

/** A plan with every stored type, both range modes, and dropped components inside and at the end. */
function plan(C: Float32Array, n: number): BasisPlan {
  const groups: QuantGroup[] = [
    { start: 0, end: 3, type: 'int8', mode: 'dynamic' },
    { start: 3, end: 5, type: 'fp8', mode: 'static' },
    { start: 5, end: 7, type: 'none', mode: 'static' },
    { start: 7, end: 10, type: 'int4', mode: 'static' },
    { start: 10, end: 13, type: 'fp8', mode: 'dynamic' },
    { start: 13, end: 14, type: 'none', mode: 'static' },
    { start: 14, end: 17, type: 'int2', mode: 'static' },
    { start: 17, end: 19, type: 'int2', mode: 'dynamic' },
    { start: 19, end: 20, type: 'none', mode: 'static' },
  ];
  const lo = new Float32Array(r);
  const hi = new Float32Array(r);
  for (const g of groups) {
    if (g.type === 'none') continue;
    for (let c = g.start; c < g.end; c++) {
      const col = Float64Array.from({ length: n }, (_, t) => C[t * r + c]);
      const f = fitStaticRange(col, g.type as StoredType);
      lo[c] = f.lo;
      hi[c] = f.hi;
    }
  }
  return {
    kind: 'value',
    layers: [0],
    dim: r,
    rank: r,
    mean: new Float32Array(r),
    basis: new Float32Array(r * r),
    variances: new Float32Array(r),
    groups,
    lo,
    hi,
  };
}

function coefficients(n: number, seed: number): Float32Array {
  const { normal } = rng(seed);
  const C = new Float32Array(n * r);
  for (let t = 0; t < n; t++) for (let j = 0; j < r; j++) C[t * r + j] = (normal() * 30) / (1 + j) + (j === 8 ? 5 : 0);
  return C;
}

/** Group g of C [n, r] through the token-major reference quantizer: codes [n, w], fp16 scales/offsets. */
function referenceCodes(C: Float32Array, n: number, p: BasisPlan, g: QuantGroup) {
  const codes = new Uint8Array(n * (g.end - g.start));
  const scales = new Uint16Array(n);
  const offsets = new Uint16Array(n);
  quantizeGroup(C, n, r, g, p.lo, p.hi, codes, scales, offsets);
  return { codes, scales, offsets };
}

/** The payload as docs/profile-format.md describes it, built with the token-major reference quantizer. */
function referencePayload(C: Float32Array, n: number, p: BasisPlan): Uint8Array {
  const out = new Uint8Array(payloadLength(p, n));
  let at = 0;
  const dyn: Uint16Array[] = [];
  for (const g of p.groups) {
    if (g.type === 'none') continue;
    const w = g.end - g.start;
    const { codes, scales, offsets } = referenceCodes(C, n, p, g);
    const cm = new Uint8Array(n * w);
    for (let t = 0; t < n; t++) for (let j = 0; j < w; j++) cm[j * n + t] = codes[t * w + j];
    at += packCodes(cm, TYPE_BITS[g.type], out, at);
    if (g.mode === 'dynamic') dyn.push(offsets, scales);
    expect(at).toBeLessThanOrEqual(out.length);
  }
  for (const d of dyn) {
    out.set(new Uint8Array(d.buffer), at);
    at += d.byteLength;
  }
  expect(at).toBe(out.length);
  return out;
}

describe('plan payload (component-major stored coefficients)', () => {
  for (const n of [1, 3, 7, 64, 257]) {
    it(`n = ${n}: same bytes as the token-major reference quantizer, and decodes to its values`, () => {
      const C = coefficients(n, 11 + n);
      const p = plan(C, n);
      const stored = storedComponents(p);
      expect(Array.from(stored)).toEqual([0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18]);
      const cm = toStoredComponentMajor(C, n, p);
      expect(cm.length).toBe(stored.length * n);
      const bytes = encodePlanPayload(cm, n, p);
      expect(Buffer.from(bytes).equals(Buffer.from(referencePayload(C, n, p)))).toBe(true);

      // Decode: the reference dequantizer's values, in the same component-major order.
      const back = decodePlanPayload(bytes, n, p);
      const ref = new Float32Array(n * r);
      let at = 0;
      for (const g of p.groups) {
        if (g.type === 'none') continue;
        const { codes, scales, offsets } = referenceCodes(C, n, p, g);
        dequantizeGroup(codes, n, r, g, p.lo, p.hi, scales, offsets, ref);
        at += g.end - g.start;
      }
      expect(at).toBe(stored.length);
      expect(Buffer.from(back.buffer).equals(Buffer.from(toStoredComponentMajor(ref, n, p).buffer))).toBe(true);
    });
  }

  it('a payload of the wrong length is refused with a clear error', () => {
    const C = coefficients(5, 3);
    const p = plan(C, 5);
    const bytes = encodePlanPayload(toStoredComponentMajor(C, 5, p), 5, p);
    expect(() => decodePlanPayload(bytes.subarray(1), 5, p, 'x.kvtc')).toThrow(/x\.kvtc: a plan section holds/);
  });
});

describe('bit packing', () => {
  it('unpackCodes inverts packCodes for every width, length and output alignment', () => {
    const { uniform } = rng(9);
    for (const bits of [2, 4, 8]) {
      for (let n = 0; n <= 37; n++) {
        const codes = Uint8Array.from({ length: n }, () => Math.floor(uniform() * (1 << bits)));
        const packed = new Uint8Array(3 + Math.ceil((n * bits) / 8));
        packCodes(codes, bits, packed, 3);
        for (const shift of [0, 1, 2, 3, 4]) {
          const out = new Uint8Array(n + 8).subarray(shift, shift + n);
          expect(Array.from(unpackCodes(packed, 3, n, bits, out))).toEqual(Array.from(codes));
        }
      }
    }
  });
});

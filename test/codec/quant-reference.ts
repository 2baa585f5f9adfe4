/**
 * The plain token-major reference quantizer: one group at a time, coefficients C [tokens, r]
 * as fit.ts lays them out, codes [tokens, width]. The codec's fast paths (payload.ts's
 * component-major loops and the encode/decode graphs) are tested against it.
 */
import { invariant } from '../../src/errors.js';
import { halfToFloat } from '../../src/io/fp16.js';
import { decodeValue, dynamicHalves, encodeValue, intLevels, staticOffset, staticScale, type StoredType } from '../../src/codec/quant.js';
import type { QuantGroup } from '../../src/codec/types.js';

function checkGroup(op: string, C: Float32Array, tokens: number, r: number, g: QuantGroup, codes: Uint8Array): StoredType {
  invariant(g.type !== 'none', `Error in ${op}: group [${g.start}, ${g.end}) has type 'none' (nothing to store)`);
  invariant(0 <= g.start && g.start < g.end && g.end <= r, `Error in ${op}: group [${g.start}, ${g.end}) outside [0, ${r})`);
  invariant(C.length >= tokens * r, `Error in ${op}: coefficient length (${C.length}) < tokens*r (${tokens}*${r})`);
  invariant(
    codes.length >= tokens * (g.end - g.start),
    `Error in ${op}: codes length (${codes.length}) < tokens*width (${tokens}*${g.end - g.start})`,
  );
  return g.type;
}

/**
 * Quantizes group g of C: Float32Array // [tokens, r] into codes: Uint8Array // [tokens, width]
 * (one code per byte). Dynamic groups also write scales/offsets: Uint16Array // [tokens] fp16.
 * lo/hi: Float32Array // [r] static ranges (read by static groups only).
 */
export function quantizeGroup(
  C: Float32Array,
  tokens: number,
  r: number,
  g: QuantGroup,
  lo: Float32Array,
  hi: Float32Array,
  codes: Uint8Array,
  scales?: Uint16Array,
  offsets?: Uint16Array,
): void {
  const type = checkGroup('quantizeGroup', C, tokens, r, g, codes);
  const w = g.end - g.start;
  const levels = intLevels(type);
  if (g.mode === 'dynamic') {
    invariant(
      scales !== undefined && offsets !== undefined && scales.length >= tokens && offsets.length >= tokens,
      `Error in quantizeGroup: dynamic group [${g.start}, ${g.end}) needs scales and offsets of length >= ${tokens}`,
    );
    for (let t = 0; t < tokens; t++) {
      const row = t * r + g.start;
      let mn = Infinity;
      let mx = -Infinity;
      for (let j = 0; j < w; j++) {
        const v = C[row + j];
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      const packed = dynamicHalves(mn, mx, type);
      const oh = packed >>> 16;
      const sh = packed & 0xffff;
      offsets[t] = oh;
      scales[t] = sh;
      const off = halfToFloat(oh);
      const sc = halfToFloat(sh);
      const out = t * w;
      for (let j = 0; j < w; j++) codes[out + j] = encodeValue(C[row + j], off, sc, levels);
    }
    return;
  }
  for (let j = 0; j < w; j++) {
    const c = g.start + j;
    const off = staticOffset(lo[c], hi[c], type);
    const sc = staticScale(lo[c], hi[c], type);
    for (let t = 0; t < tokens; t++) codes[t * w + j] = encodeValue(C[t * r + c], off, sc, levels);
  }
}

/** Inverse of quantizeGroup: writes group g's columns of out: Float32Array // [tokens, r]. */
export function dequantizeGroup(
  codes: Uint8Array,
  tokens: number,
  r: number,
  g: QuantGroup,
  lo: Float32Array,
  hi: Float32Array,
  scales: Uint16Array | undefined,
  offsets: Uint16Array | undefined,
  out: Float32Array,
): void {
  const type = checkGroup('dequantizeGroup', out, tokens, r, g, codes);
  const w = g.end - g.start;
  const levels = intLevels(type);
  if (g.mode === 'dynamic') {
    invariant(
      scales !== undefined && offsets !== undefined,
      `Error in dequantizeGroup: dynamic group [${g.start}, ${g.end}) needs scales and offsets`,
    );
    for (let t = 0; t < tokens; t++) {
      const off = halfToFloat(offsets[t]);
      const sc = halfToFloat(scales[t]);
      const row = t * r + g.start;
      const src = t * w;
      for (let j = 0; j < w; j++) out[row + j] = decodeValue(codes[src + j], off, sc, levels);
    }
    return;
  }
  for (let j = 0; j < w; j++) {
    const c = g.start + j;
    const off = staticOffset(lo[c], hi[c], type);
    const sc = staticScale(lo[c], hi[c], type);
    for (let t = 0; t < tokens; t++) out[t * r + c] = decodeValue(codes[t * w + j], off, sc, levels);
  }
}

/**
 * A plan section's payload (before DEFLATE), for n compressed tokens:
 *   for each stored group g, in order: its codes component-major (all n tokens of component
 *     g.start, then g.start+1, ...), bit-packed at the group's width (pack.ts);
 *   then for each dynamic group, in order: offsets u16[n] then scales u16[n] (fp16 bits, LE).
 * Component-major keeps symbols of one distribution together, which is what the
 * Huffman stage can exploit (token-major interleaves components of different spreads).
 */
import { KvtcError } from '../errors.js';
import { packCodes, packedLength, unpackCodes } from './pack.js';
import { FP8_TO_FLOAT } from './fp8.js';
import { halfToFloat } from '../io/fp16.js';
import { dynamicHalves, encodeValue, intLevels, quantizeStaticRun, staticCode, staticDecodeTable, staticOffset, staticScale, type StoredType } from './quant.js';
import { TYPE_BITS, type BasisPlan, type QuantGroup } from './types.js';

function stored(plan: Pick<BasisPlan, 'groups'>): QuantGroup[] {
  return plan.groups.filter((g) => g.type !== 'none');
}

export function payloadLength(plan: BasisPlan, n: number): number {
  let bytes = 0;
  for (const g of stored(plan)) {
    bytes += packedLength(n * (g.end - g.start), TYPE_BITS[g.type]);
    if (g.mode === 'dynamic') bytes += 4 * n;
  }
  return bytes;
}

// Scratch buffers reused across calls (the hot path allocates only its output).
let compMajor = new Uint8Array(0);
let offF = new Float64Array(0);
let scF = new Float64Array(0);
let mnF = new Float64Array(0);
let mxF = new Float64Array(0);
const lut = new Float32Array(256);
const scratch = (codes: number, tokens: number) => {
  if (compMajor.length < codes) compMajor = new Uint8Array(codes);
  if (offF.length < tokens) {
    offF = new Float64Array(tokens);
    scF = new Float64Array(tokens);
    mnF = new Float64Array(tokens);
    mxF = new Float64Array(tokens);
  }
};

/**
 * Quantizes a static group's components (rows row.. of coeffs [k, n]) and bit-packs the codes
 * straight into out at `at`, in one pass; returns the offset after the group. The same codes
 * as quantizeStaticRun (same rounding), the same bytes as packCodes.
 */
function packStaticGroup(coeffs: Float32Array, row: number, n: number, g: QuantGroup, lo: Float32Array, hi: Float32Array, out: Uint8Array, at: number): number {
  const type = g.type as StoredType;
  const bits = TYPE_BITS[type];
  const levels = intLevels(type);
  const w = g.end - g.start;
  if (bits === 8) {
    for (let j = 0; j < w; j++) quantizeStaticRun(coeffs, (row + j) * n, 1, n, lo[g.start + j], hi[g.start + j], type, out, at + j * n);
    return at + n * w;
  }
  let acc = 0;
  let nb = 0;
  for (let j = 0; j < w; j++) {
    const c = g.start + j;
    const off = staticOffset(lo[c], hi[c], type);
    const sc = staticScale(lo[c], hi[c], type);
    const base = (row + j) * n;
    const scq = sc === 0 ? Infinity : sc; // a zero scale stores code 0: (x − off) / ∞ = 0
    let t = 0;
    // Finish the byte the previous component left open, then whole bytes, then the tail.
    for (; t < n && nb !== 0; t++) {
      acc |= staticCode(coeffs[base + t], off, scq, levels) << nb;
      nb = (nb + bits) & 7;
      if (nb === 0) {
        out[at++] = acc;
        acc = 0;
      }
    }
    if (bits === 2) for (; t + 4 <= n; t += 4) out[at++] = staticCode(coeffs[base + t], off, scq, levels) | (staticCode(coeffs[base + t + 1], off, scq, levels) << 2) | (staticCode(coeffs[base + t + 2], off, scq, levels) << 4) | (staticCode(coeffs[base + t + 3], off, scq, levels) << 6);
    else for (; t + 2 <= n; t += 2) out[at++] = staticCode(coeffs[base + t], off, scq, levels) | (staticCode(coeffs[base + t + 1], off, scq, levels) << 4);
    for (; t < n; t++) {
      acc |= staticCode(coeffs[base + t], off, scq, levels) << nb;
      nb += bits;
    }
  }
  if (nb > 0) out[at++] = acc;
  return at;
}

/**
 * Inverse of packStaticGroup: unpacks and dequantizes a static group into rows row.. of
 * coeffs [k, n] in one pass (one table load per coefficient), whole bytes at a time.
 */
function unpackStaticGroup(payload: Uint8Array, at: number, n: number, g: QuantGroup, lo: Float32Array, hi: Float32Array, coeffs: Float32Array, row: number): void {
  const type = g.type as StoredType;
  const bits = TYPE_BITS[type];
  const w = g.end - g.start;
  const mask = (1 << bits) - 1;
  const per = 8 / bits; // codes per byte
  for (let j = 0, i = 0; j < w; j++) {
    // i: index of this component's first code within the group
    staticDecodeTable(lo[g.start + j], hi[g.start + j], type, lut);
    const o = (row + j) * n;
    let t = 0;
    if (bits === 8) {
      for (; t < n; t++, i++) coeffs[o + t] = lut[payload[at + i]];
      continue;
    }
    for (; t < n && i % per !== 0; t++, i++) coeffs[o + t] = lut[(payload[at + ((i / per) | 0)] >> ((i % per) * bits)) & mask];
    if (bits === 2) {
      for (; t + 4 <= n; t += 4, i += 4) {
        const b = payload[at + (i >> 2)];
        coeffs[o + t] = lut[b & 3];
        coeffs[o + t + 1] = lut[(b >> 2) & 3];
        coeffs[o + t + 2] = lut[(b >> 4) & 3];
        coeffs[o + t + 3] = lut[b >> 6];
      }
    } else {
      for (; t + 2 <= n; t += 2, i += 2) {
        const b = payload[at + (i >> 1)];
        coeffs[o + t] = lut[b & 15];
        coeffs[o + t + 1] = lut[b >> 4];
      }
    }
    for (; t < n; t++, i++) coeffs[o + t] = lut[(payload[at + ((i / per) | 0)] >> ((i % per) * bits)) & mask];
  }
}

/** Indices of the stored components (groups of a type other than 'none'), in group order. */
export function storedComponents(plan: Pick<BasisPlan, 'groups'>): Int32Array {
  const idx: number[] = [];
  for (const g of stored(plan)) for (let c = g.start; c < g.end; c++) idx.push(c);
  return Int32Array.from(idx);
}

/**
 * Token-major coefficients C [n, r] (as fit.ts and the reference code lay them out) →
 * the codec's working layout: stored components only, component-major [k, n].
 */
export function toStoredComponentMajor(C: Float32Array, n: number, plan: BasisPlan): Float32Array {
  const idx = storedComponents(plan);
  const r = plan.rank;
  const out = new Float32Array(idx.length * n);
  for (let j = 0; j < idx.length; j++) for (let t = 0, o = j * n, s = idx[j]; t < n; t++, o++, s += r) out[o] = C[s];
  return out;
}

/**
 * coeffs: Float32Array // [k, n], component-major over the plan's stored components
 * (storedComponents order) → payload bytes. Every loop reads one component's run of n
 * coefficients in order; static groups quantize straight into the group's code run.
 * Same codes as quant.ts's quantizeGroup on the token-major layout (tested).
 */
export function encodePlanPayload(coeffs: Float32Array, n: number, plan: BasisPlan): Uint8Array {
  const out = new Uint8Array(payloadLength(plan, n));
  const groups = stored(plan);
  const dyn: { offsets: Uint16Array; scales: Uint16Array }[] = [];
  let at = 0;
  let row = 0; // first coefficient row of the group
  for (const g of groups) {
    const w = g.end - g.start;
    scratch(n * w, n);
    const type = g.type as StoredType;
    if (g.mode === 'dynamic') {
      const offsets = new Uint16Array(n);
      const scales = new Uint16Array(n);
      dyn.push({ offsets, scales });
      mnF.fill(Infinity, 0, n);
      mxF.fill(-Infinity, 0, n);
      for (let j = 0; j < w; j++) {
        for (let t = 0, o = (row + j) * n; t < n; t++, o++) {
          const v = coeffs[o];
          if (v < mnF[t]) mnF[t] = v;
          if (v > mxF[t]) mxF[t] = v;
        }
      }
      for (let t = 0; t < n; t++) {
        const h = dynamicHalves(mnF[t], mxF[t], type);
        offsets[t] = h >>> 16;
        scales[t] = h & 0xffff;
        offF[t] = halfToFloat(offsets[t]);
        scF[t] = halfToFloat(scales[t]);
      }
      const levels = intLevels(type);
      for (let j = 0; j < w; j++) {
        for (let t = 0, o = (row + j) * n, d = j * n; t < n; t++, o++, d++) compMajor[d] = encodeValue(coeffs[o], offF[t], scF[t], levels);
      }
      at += packCodes(compMajor.subarray(0, n * w), TYPE_BITS[g.type], out, at);
    } else {
      at = packStaticGroup(coeffs, row, n, g, plan.lo, plan.hi, out, at);
    }
    row += w;
  }
  for (const d of dyn) {
    out.set(new Uint8Array(d.offsets.buffer), at);
    at += 2 * n;
    out.set(new Uint8Array(d.scales.buffer), at);
    at += 2 * n;
  }
  return out;
}

/**
 * Inverse of encodePlanPayload → coeffs: Float32Array // [k, n], component-major over the
 * stored components. Static groups: one table load per coefficient, written in order.
 * Bit-identical to quant.ts's dequantizeGroup.
 */
export function decodePlanPayload(payload: Uint8Array, n: number, plan: BasisPlan, source = '<blob>'): Float32Array {
  const expected = payloadLength(plan, n);
  if (payload.byteLength !== expected) {
    throw new KvtcError('BLOB_INVALID', `${source}: a plan section holds ${payload.byteLength} bytes, the profile's plan needs ${expected} for ${n} tokens`, {
      fix: 'The blob was not encoded with this profile, or it is corrupt: re-encode it.',
    });
  }
  const groups = stored(plan);
  let k = 0;
  for (const g of groups) k += g.end - g.start;
  const coeffs = new Float32Array(k * n);
  // Dynamic offsets/scales live after all code blocks.
  let dynAt = 0;
  for (const g of groups) dynAt += packedLength(n * (g.end - g.start), TYPE_BITS[g.type]);
  let at = 0;
  let row = 0;
  for (const g of groups) {
    const w = g.end - g.start;
    const bits = TYPE_BITS[g.type];
    const type = g.type as StoredType;
    scratch(n * w, n);
    if (g.mode === 'static') {
      unpackStaticGroup(payload, at, n, g, plan.lo, plan.hi, coeffs, row);
      at += packedLength(n * w, bits);
      row += w;
      continue;
    }
    unpackCodes(payload, at, n * w, bits, compMajor);
    at += packedLength(n * w, bits);
    // Little-endian u16 read byte-wise: code blocks can leave dynAt odd.
    for (let t = 0, o = dynAt, s = dynAt + 2 * n; t < n; t++, o += 2, s += 2) {
      offF[t] = halfToFloat(payload[o] | (payload[o + 1] << 8));
      scF[t] = halfToFloat(payload[s] | (payload[s + 1] << 8));
    }
    dynAt += 4 * n;
    const levels = intLevels(type);
    for (let j = 0; j < w; j++) {
      const s = j * n;
      const o = (row + j) * n;
      if (levels > 0) for (let t = 0; t < n; t++) coeffs[o + t] = offF[t] + compMajor[s + t] * scF[t];
      else for (let t = 0; t < n; t++) coeffs[o + t] = offF[t] + FP8_TO_FLOAT[compMajor[s + t]] * scF[t];
    }
    row += w;
  }
  return coeffs;
}

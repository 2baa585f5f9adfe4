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
import { intLevels, quantizeGroup, quantizeStaticRun, staticDecodeTable, type StoredType } from './quant.js';
import { TYPE_BITS, type BasisPlan, type QuantGroup } from './types.js';

function stored(plan: BasisPlan): QuantGroup[] {
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
let tokenMajor = new Uint8Array(0);
let compMajor = new Uint8Array(0);
const lut = new Float32Array(256);
const scratch = (need: number) => {
  if (tokenMajor.length < need) {
    tokenMajor = new Uint8Array(need);
    compMajor = new Uint8Array(need);
  }
};

/**
 * coeffs: Float32Array // [n, plan.rank] → payload bytes.
 * Static groups (the common case) quantize each component straight into its component-major
 * code run; dynamic groups go through quantizeGroup. Same codes either way.
 */
export function encodePlanPayload(coeffs: Float32Array, n: number, plan: BasisPlan): Uint8Array {
  const out = new Uint8Array(payloadLength(plan, n));
  const groups = stored(plan);
  const r = plan.rank;
  const dyn: { offsets: Uint16Array; scales: Uint16Array }[] = [];
  let at = 0;
  for (const g of groups) {
    const w = g.end - g.start;
    scratch(n * w);
    const type = g.type as StoredType;
    if (g.mode === 'dynamic') {
      const offsets = new Uint16Array(n);
      const scales = new Uint16Array(n);
      dyn.push({ offsets, scales });
      quantizeGroup(coeffs, n, r, g, plan.lo, plan.hi, tokenMajor, scales, offsets);
      for (let t = 0; t < n; t++) for (let j = 0; j < w; j++) compMajor[j * n + t] = tokenMajor[t * w + j];
    } else {
      for (let j = 0; j < w; j++) {
        const c = g.start + j;
        quantizeStaticRun(coeffs, c, r, n, plan.lo[c], plan.hi[c], type, compMajor, j * n);
      }
    }
    at += packCodes(compMajor.subarray(0, n * w), TYPE_BITS[g.type], out, at);
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
 * Inverse of encodePlanPayload → coeffs: Float32Array // [n, plan.rank].
 * One table load per static coefficient (decodeValue's arithmetic for dynamic groups),
 * written straight into its token-major slot. Bit-identical to dequantizeGroup.
 */
export function decodePlanPayload(payload: Uint8Array, n: number, plan: BasisPlan, source = '<blob>'): Float32Array {
  const expected = payloadLength(plan, n);
  if (payload.byteLength !== expected) {
    throw new KvtcError('BLOB_INVALID', `${source}: a plan section holds ${payload.byteLength} bytes, the profile's plan needs ${expected} for ${n} tokens`, {
      fix: 'The blob was not encoded with this profile, or it is corrupt: re-encode it.',
    });
  }
  const r = plan.rank;
  const coeffs = new Float32Array(n * r);
  const groups = stored(plan);
  // Dynamic offsets/scales live after all code blocks.
  let dynAt = 0;
  for (const g of groups) dynAt += packedLength(n * (g.end - g.start), TYPE_BITS[g.type]);
  let offF: Float64Array | undefined;
  let scF: Float64Array | undefined;
  let at = 0;
  for (const g of groups) {
    const w = g.end - g.start;
    const bits = TYPE_BITS[g.type];
    const type = g.type as StoredType;
    scratch(n * w);
    unpackCodes(payload, at, n * w, bits, compMajor);
    at += packedLength(n * w, bits);
    if (g.mode === 'dynamic') {
      if (!offF || offF.length < n) {
        offF = new Float64Array(n);
        scF = new Float64Array(n);
      }
      // Little-endian u16 read byte-wise: code blocks can leave dynAt odd.
      for (let t = 0, o = dynAt, s = dynAt + 2 * n; t < n; t++, o += 2, s += 2) {
        offF[t] = halfToFloat(payload[o] | (payload[o + 1] << 8));
        scF![t] = halfToFloat(payload[s] | (payload[s + 1] << 8));
      }
      dynAt += 4 * n;
      const levels = intLevels(type);
      for (let j = 0; j < w; j++) {
        const s = j * n;
        const c = g.start + j;
        if (levels > 0) for (let t = 0, o = c; t < n; t++, o += r) coeffs[o] = offF[t] + compMajor[s + t] * scF![t];
        else for (let t = 0, o = c; t < n; t++, o += r) coeffs[o] = offF[t] + FP8_TO_FLOAT[compMajor[s + t]] * scF![t];
      }
    } else {
      for (let j = 0; j < w; j++) {
        const c = g.start + j;
        staticDecodeTable(plan.lo[c], plan.hi[c], type, lut);
        const s = j * n;
        for (let t = 0, o = c; t < n; t++, o += r) coeffs[o] = lut[compMajor[s + t]];
      }
    }
  }
  return coeffs;
}

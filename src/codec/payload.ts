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
import { dequantizeGroup, quantizeGroup } from './quant.js';
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

// Scratch buffers reused across calls (single-threaded hot path: no per-call allocation).
let tokenMajor = new Uint8Array(0);
let compMajor = new Uint8Array(0);
const scratch = (need: number) => {
  if (tokenMajor.length < need) {
    tokenMajor = new Uint8Array(need);
    compMajor = new Uint8Array(need);
  }
};

/** coeffs: Float32Array // [n, plan.rank] → payload bytes. */
export function encodePlanPayload(coeffs: Float32Array, n: number, plan: BasisPlan): Uint8Array {
  const out = new Uint8Array(payloadLength(plan, n));
  const groups = stored(plan);
  const dyn: { offsets: Uint16Array; scales: Uint16Array }[] = [];
  let at = 0;
  for (const g of groups) {
    const w = g.end - g.start;
    scratch(n * w);
    let offsets: Uint16Array | undefined;
    let scales: Uint16Array | undefined;
    if (g.mode === 'dynamic') {
      offsets = new Uint16Array(n);
      scales = new Uint16Array(n);
      dyn.push({ offsets, scales });
    }
    quantizeGroup(coeffs, n, plan.rank, g, plan.lo, plan.hi, tokenMajor, scales, offsets);
    for (let t = 0; t < n; t++) for (let j = 0; j < w; j++) compMajor[j * n + t] = tokenMajor[t * w + j];
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

/** Inverse of encodePlanPayload → coeffs: Float32Array // [n, plan.rank]. */
export function decodePlanPayload(payload: Uint8Array, n: number, plan: BasisPlan, source = '<blob>'): Float32Array {
  const expected = payloadLength(plan, n);
  if (payload.byteLength !== expected) {
    throw new KvtcError('BLOB_INVALID', `${source}: a plan section holds ${payload.byteLength} bytes, the profile's plan needs ${expected} for ${n} tokens`, {
      fix: 'The blob was not encoded with this profile, or it is corrupt: re-encode it.',
    });
  }
  const coeffs = new Float32Array(n * plan.rank);
  const groups = stored(plan);
  // Dynamic offsets/scales live after all code blocks.
  let dynAt = 0;
  for (const g of groups) dynAt += packedLength(n * (g.end - g.start), TYPE_BITS[g.type]);
  const aligned = payload.byteOffset % 2 === 0 ? payload : payload.slice();
  let at = 0;
  for (const g of groups) {
    const w = g.end - g.start;
    const bits = TYPE_BITS[g.type];
    scratch(n * w);
    unpackCodes(aligned, at, n * w, bits, compMajor);
    at += packedLength(n * w, bits);
    for (let j = 0; j < w; j++) for (let t = 0; t < n; t++) tokenMajor[t * w + j] = compMajor[j * n + t];
    let offsets: Uint16Array | undefined;
    let scales: Uint16Array | undefined;
    if (g.mode === 'dynamic') {
      offsets = new Uint16Array(aligned.buffer.slice(aligned.byteOffset + dynAt, aligned.byteOffset + dynAt + 2 * n));
      scales = new Uint16Array(aligned.buffer.slice(aligned.byteOffset + dynAt + 2 * n, aligned.byteOffset + dynAt + 4 * n));
      dynAt += 4 * n;
    }
    dequantizeGroup(tokenMajor, n, plan.rank, g, plan.lo, plan.hi, scales, offsets, coeffs);
  }
  return coeffs;
}

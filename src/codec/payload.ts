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
import {
  dynamicHalves,
  encodeValue,
  intLevels,
  quantizeStaticRun,
  staticCode,
  staticDecodeTable,
  staticOffset,
  staticScale,
  type StoredType,
} from './quant.js';
import { TYPE_BITS, type BasisPlan, type PlanCodesLayout, type QuantGroup } from './types.js';

function stored(plan: Pick<BasisPlan, 'groups'>): QuantGroup[] {
  return plan.groups.filter((g) => g.type !== 'none');
}

export function payloadLength(plan: PlanCodesLayout, n: number): number {
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
export function toStoredComponentMajor(C: Float32Array, n: number, plan: PlanCodesLayout): Float32Array {
  const idx = storedComponents(plan);
  const r = plan.rank;
  const out = new Float32Array(idx.length * n);
  for (let j = 0; j < idx.length; j++) for (let t = 0, o = j * n, s = idx[j]; t < n; t++, o++, s += r) out[o] = C[s];
  return out;
}

/** A static int group: its codes are an affine function of the coefficient, offset + code·scale. */
function affine(g: QuantGroup): boolean {
  return g.mode === 'static' && g.type !== 'fp8' && g.type !== 'none';
}

/**
 * The stored components split by how they are coded: `affine` (static int2/int4/int8 groups,
 * code = round((c − offset) / scale) clamped, which the ONNX graphs compute and undo themselves)
 * and `other` (dynamic groups and static fp8, quantized on the host). Each in stored order.
 */
export interface StoredSplit {
  affine: Int32Array;
  other: Int32Array;
  /** Per affine component: offset, scale and largest code (static ranges of the profile). */
  offset: Float64Array;
  scale: Float64Array;
  levels: Float64Array;
}

export function splitStored(plan: PlanCodesLayout): StoredSplit {
  const a: number[] = [];
  const o: number[] = [];
  const off: number[] = [];
  const sc: number[] = [];
  const lv: number[] = [];
  for (const g of stored(plan)) {
    for (let c = g.start; c < g.end; c++) {
      if (!affine(g)) {
        o.push(c);
        continue;
      }
      const type = g.type as StoredType;
      a.push(c);
      off.push(staticOffset(plan.lo[c], plan.hi[c], type));
      sc.push(staticScale(plan.lo[c], plan.hi[c], type));
      lv.push(intLevels(type));
    }
  }
  return {
    affine: Int32Array.from(a),
    other: Int32Array.from(o),
    offset: Float64Array.from(off),
    scale: Float64Array.from(sc),
    levels: Float64Array.from(lv),
  };
}

/**
 * A plan's quantized coefficients as the codec hands them around, component-major:
 * codes [kA, n] of the affine components (splitStored order), coeffs [kB, n] of the others.
 */
export interface PlanCodes {
  codes: Uint8Array;
  coeffs: Float32Array;
}

/**
 * Where a plan's tokens sit, for the messages of the range checks: the plan's index and the
 * cache token of compressed token 0 (the sink count).
 */
export interface PlanSite {
  plan: number;
  firstToken: number;
  source: string;
}

const HALF_MAX = 65504;

function planLabel(plan: PlanCodesLayout, site: PlanSite): string {
  return `${site.plan >= 0 ? `plan ${site.plan}` : 'the plan'} (${plan.kind}s of layer${plan.layers.length > 1 ? 's' : ''} ${plan.layers.join(', ')})`;
}

/**
 * PlanCodes → payload bytes: affine groups are bit-packed as they are, the others quantized here.
 * With `site` (the codec's encode), a dynamic group whose coefficients leave the fp16 range of its
 * stored offset and scale is refused (KV_OUT_OF_RANGE) instead of being clipped at ±65504.
 */
export function encodePlanCodes(pc: PlanCodes, n: number, plan: PlanCodesLayout, site?: PlanSite): Uint8Array {
  const out = new Uint8Array(payloadLength(plan, n));
  const dyn: { offsets: Uint16Array; scales: Uint16Array }[] = [];
  let at = 0;
  let ra = 0; // next row of pc.codes
  let rb = 0; // next row of pc.coeffs
  for (const g of stored(plan)) {
    const w = g.end - g.start;
    const type = g.type as StoredType;
    if (affine(g)) {
      at += packCodes(pc.codes.subarray(ra * n, (ra + w) * n), TYPE_BITS[type], out, at);
      ra += w;
      continue;
    }
    scratch(n * w, n);
    const coeffs = pc.coeffs;
    if (g.mode === 'dynamic') {
      const offsets = new Uint16Array(n);
      const scales = new Uint16Array(n);
      dyn.push({ offsets, scales });
      mnF.fill(Infinity, 0, n);
      mxF.fill(-Infinity, 0, n);
      for (let j = 0; j < w; j++) {
        for (let t = 0, o = (rb + j) * n; t < n; t++, o++) {
          const v = coeffs[o];
          if (v < mnF[t]) mnF[t] = v;
          if (v > mxF[t]) mxF[t] = v;
        }
      }
      if (site) checkDynamicRange(n, plan, g, site);
      for (let t = 0; t < n; t++) {
        const h = dynamicHalves(mnF[t], mxF[t], type);
        offsets[t] = h >>> 16;
        scales[t] = h & 0xffff;
        offF[t] = halfToFloat(offsets[t]);
        scF[t] = halfToFloat(scales[t]);
      }
      const levels = intLevels(type);
      for (let j = 0; j < w; j++) {
        for (let t = 0, o = (rb + j) * n, d = j * n; t < n; t++, o++, d++) compMajor[d] = encodeValue(coeffs[o], offF[t], scF[t], levels);
      }
    } else {
      // static fp8
      for (let j = 0; j < w; j++)
        quantizeStaticRun(coeffs, (rb + j) * n, 1, n, plan.lo[g.start + j], plan.hi[g.start + j], type, compMajor, j * n);
    }
    at += packCodes(compMajor.subarray(0, n * w), TYPE_BITS[type], out, at);
    rb += w;
  }
  for (const d of dyn) {
    out.set(new Uint8Array(d.offsets.buffer), at);
    at += 2 * n;
    out.set(new Uint8Array(d.scales.buffer), at);
    at += 2 * n;
  }
  return out;
}

/** Encode-side: mnF/mxF of a dynamic group's tokens must fit fp16 (its offset and scale are fp16). */
function checkDynamicRange(n: number, plan: PlanCodesLayout, g: QuantGroup, site: PlanSite): void {
  for (let t = 0; t < n; t++) {
    if (mnF[t] >= -HALF_MAX && mxF[t] <= HALF_MAX) continue;
    const v = mnF[t] < -HALF_MAX ? mnF[t] : mxF[t];
    throw new KvtcError(
      'KV_OUT_OF_RANGE',
      `${site.source}: token ${site.firstToken + t} has a coefficient of ${v} in ${planLabel(plan, site)}, dynamic group ${g.start}–${g.end - 1}; its per-token range is stored as fp16, which holds at most ±65504`,
      {
        fix: 'The cache is far outside what the profile was calibrated on: recalibrate the profile on representative data (`kvtc calibrate`), or check the cache.',
        context: {
          source: site.source,
          plan: site.plan,
          kind: plan.kind,
          layers: plan.layers,
          token: site.firstToken + t,
          value: v,
          components: [g.start, g.end],
        },
      },
    );
  }
}

function blobInvalid(source: string, message: string, context: Record<string, unknown>): KvtcError {
  return new KvtcError('BLOB_INVALID', `${source}: ${message}`, {
    fix: 'The blob was not encoded with this profile, or it is corrupt: re-encode it.',
    context: { blob: source, ...context },
  });
}

/** Decode-side: fp8 codes 0x7F/0xFF are NaN, never written; one in a blob means it is corrupt. */
function checkFp8Codes(codes: Uint8Array, count: number, n: number, g: QuantGroup, site: PlanSite, plan: PlanCodesLayout): void {
  for (let i = 0; i < count; i++) {
    if ((codes[i] & 0x7f) !== 0x7f) continue;
    const c = g.start + Math.floor(i / n);
    const t = i % n;
    throw blobInvalid(
      site.source,
      `${planLabel(plan, site)} stores fp8 code 0x${codes[i].toString(16)} (NaN, never written) for component ${c} of token ${site.firstToken + t}`,
      { plan: site.plan, component: c, token: site.firstToken + t, code: codes[i] },
    );
  }
}

/**
 * Inverse of encodePlanCodes: affine groups are only unpacked; the others are dequantized.
 * Every value it returns is finite: a NaN fp8 code or a non-finite fp16 offset or scale of a
 * dynamic group is refused (BLOB_INVALID) — named by `site` (plan index, cache token) when given.
 * `codesInto`: a buffer to unpack the codes into (every byte is written) instead of a new one.
 */
export function decodePlanCodes(
  payload: Uint8Array,
  n: number,
  plan: PlanCodesLayout,
  source = '<blob>',
  codesInto?: Uint8Array,
  site: PlanSite = { plan: -1, firstToken: 0, source },
): PlanCodes {
  const expected = payloadLength(plan, n);
  if (payload.byteLength !== expected) {
    throw blobInvalid(source, `a plan section holds ${payload.byteLength} bytes, the profile's plan needs ${expected} for ${n} tokens`, {
      plan: site.plan,
      bytes: payload.byteLength,
      expected,
      tokens: n,
    });
  }
  const groups = stored(plan);
  let ka = 0;
  let kb = 0;
  for (const g of groups) {
    if (affine(g)) ka += g.end - g.start;
    else kb += g.end - g.start;
  }
  const codes = codesInto && codesInto.length >= ka * n ? codesInto.subarray(0, ka * n) : new Uint8Array(ka * n);
  const coeffs = new Float32Array(kb * n);
  // Dynamic offsets/scales live after all code blocks.
  let dynAt = 0;
  for (const g of groups) dynAt += packedLength(n * (g.end - g.start), TYPE_BITS[g.type]);
  let at = 0;
  let ra = 0;
  let rb = 0;
  for (const g of groups) {
    const w = g.end - g.start;
    const bits = TYPE_BITS[g.type];
    const type = g.type as StoredType;
    if (affine(g)) {
      const dst = codes.subarray(ra * n, (ra + w) * n);
      if (dst.byteOffset % 4 === 0 || bits === 8) unpackCodes(payload, at, n * w, bits, dst);
      else {
        // unaligned row start: unpack word-wise into the scratch buffer, then copy
        scratch(n * w, n);
        dst.set(unpackCodes(payload, at, n * w, bits, compMajor).subarray(0, n * w));
      }
      at += packedLength(n * w, bits);
      ra += w;
      continue;
    }
    scratch(n * w, n);
    unpackCodes(payload, at, n * w, bits, compMajor);
    at += packedLength(n * w, bits);
    if (type === 'fp8') checkFp8Codes(compMajor, n * w, n, g, site, plan);
    if (g.mode === 'static') {
      // static fp8: one table load per coefficient
      for (let j = 0; j < w; j++) {
        staticDecodeTable(plan.lo[g.start + j], plan.hi[g.start + j], type, lut);
        for (let t = 0, s = j * n, o = (rb + j) * n; t < n; t++) coeffs[o + t] = lut[compMajor[s + t]];
      }
      rb += w;
      continue;
    }
    // Little-endian u16 read byte-wise: code blocks can leave dynAt odd.
    for (let t = 0, o = dynAt, s = dynAt + 2 * n; t < n; t++, o += 2, s += 2) {
      const oh = payload[o] | (payload[o + 1] << 8);
      const sh = payload[s] | (payload[s + 1] << 8);
      // exponent bits all ones: ±Inf or NaN, which no encoder writes
      if ((oh & 0x7c00) === 0x7c00 || (sh & 0x7c00) === 0x7c00) {
        const which = (oh & 0x7c00) === 0x7c00 ? 'offset' : 'scale';
        const bitsOf = which === 'offset' ? oh : sh;
        throw blobInvalid(
          site.source,
          `${planLabel(plan, site)}, dynamic group ${g.start}–${g.end - 1}: the fp16 ${which} of token ${site.firstToken + t} is ${halfToFloat(bitsOf)} (0x${bitsOf.toString(16).padStart(4, '0')}); a dynamic ${which} must be finite`,
          { plan: site.plan, components: [g.start, g.end], token: site.firstToken + t, field: which, value: halfToFloat(bitsOf) },
        );
      }
      offF[t] = halfToFloat(oh);
      scF[t] = halfToFloat(sh);
    }
    dynAt += 4 * n;
    const levels = intLevels(type);
    for (let j = 0; j < w; j++) {
      const s = j * n;
      const o = (rb + j) * n;
      if (levels > 0) for (let t = 0; t < n; t++) coeffs[o + t] = offF[t] + compMajor[s + t] * scF[t];
      else for (let t = 0; t < n; t++) coeffs[o + t] = offF[t] + FP8_TO_FLOAT[compMajor[s + t]] * scF[t];
    }
    rb += w;
  }
  return { codes, coeffs };
}

/**
 * Host quantization of all stored components: coeffs [k, n] (storedComponents order,
 * component-major) → PlanCodes. What the encode graph computes for affine components, in
 * float64 (quant.ts's staticCode); used where coefficients come from the host (calibration).
 */
export function quantizeStored(coeffs: Float32Array, n: number, plan: PlanCodesLayout): PlanCodes {
  const sp = splitStored(plan);
  const codes = new Uint8Array(sp.affine.length * n);
  const other = new Float32Array(sp.other.length * n);
  let ra = 0;
  let rb = 0;
  let row = 0;
  for (const g of stored(plan)) {
    for (let c = g.start; c < g.end; c++, row++) {
      if (!affine(g)) {
        other.set(coeffs.subarray(row * n, (row + 1) * n), rb * n);
        rb++;
        continue;
      }
      const sc = sp.scale[ra] === 0 ? Infinity : sp.scale[ra]; // a zero scale stores code 0
      for (let t = 0, s = row * n, d = ra * n; t < n; t++) codes[d + t] = staticCode(coeffs[s + t], sp.offset[ra], sc, sp.levels[ra]);
      ra++;
    }
  }
  return { codes, coeffs: other };
}

/** coeffs [k, n] (storedComponents order, component-major) → payload bytes, quantizing on the host. */
export function encodePlanPayload(coeffs: Float32Array, n: number, plan: PlanCodesLayout): Uint8Array {
  return encodePlanCodes(quantizeStored(coeffs, n, plan), n, plan);
}

/**
 * Baseline KV codecs that KVTC is compared against. Each takes a KvCache and returns the
 * reconstruction a decoder would see plus the honest storage size: packed integer codes,
 * every fp16 scale and offset, and the tokens kept in fp16. No container header is
 * counted (KVTC's blob header is small and reported separately).
 *
 *  fp16   every value rounded to fp16 (lossless on an fp16 cache): the reference size.
 *  int8   per token and head, affine min/max over headDim, fp16 scale + offset.
 *  int4   the same with 4-bit codes.
 *  kivi2  KIVI (Liu et al., 2024) 2-bit: keys per channel over groups of `groupSize`
 *         tokens, values per token over groups of `groupSize` channels, fp16 scale + zero;
 *         the most recent `recentTokens` tokens and the tokens that do not fill a whole
 *         key group are kept in fp16.
 *
 * Every codec also keeps `sinkTokens` leading and `recentTokens` trailing tokens in fp16,
 * so that the baselines can be run under the same protection as KVTC.
 */
import { invariant } from '../errors.js';
import { floatToHalf, halfToFloat } from '../io/fp16.js';
import type { KvCache } from '../model/types.js';

export type BaselineName = 'fp16' | 'int8' | 'int4' | 'kivi2';

export const BASELINE_NAMES: readonly BaselineName[] = ['fp16', 'int8', 'int4', 'kivi2'];

export interface BaselineOptions {
  /** Leading tokens kept in fp16 (attention sinks). Default 0. */
  sinkTokens?: number;
  /** Most recent tokens kept in fp16. Default 0, and 128 for kivi2 (KIVI's residual length). */
  recentTokens?: number;
  /** kivi2 only: tokens per key group and channels per value group. Default 32. */
  groupSize?: number;
}

export interface BaselineResult {
  name: BaselineName;
  /** The reconstruction (same shape and dtype tag as the input). */
  cache: KvCache;
  /** Stored bytes: codes (bit-packed) + fp16 scales/offsets + fp16 tokens. */
  bytes: number;
}

export interface CacheShape {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Width of each value head; absent: headDim. */
  valueDim?: number;
  tokens: number;
}

const KIVI_DEFAULT_RECENT = 128;
const KIVI_DEFAULT_GROUP = 32;

function fp16(x: number): number {
  return halfToFloat(floatToHalf(x));
}

/**
 * Which tokens are quantized: [start, end). Tokens outside are kept in fp16.
 * kivi2 shortens the range to a whole number of key groups, leaving the rest in fp16.
 */
export function quantizedRange(name: BaselineName, tokens: number, options: BaselineOptions = {}): { start: number; end: number } {
  if (name === 'fp16') return { start: 0, end: 0 };
  const sink = options.sinkTokens ?? 0;
  const recent = options.recentTokens ?? (name === 'kivi2' ? KIVI_DEFAULT_RECENT : 0);
  invariant(sink >= 0 && recent >= 0, `Error in baseline ${name}: sinkTokens (${sink}) and recentTokens (${recent}) must be >= 0`);
  const start = Math.min(sink, tokens);
  let end = Math.max(start, tokens - recent);
  if (name === 'kivi2') {
    const g = options.groupSize ?? KIVI_DEFAULT_GROUP;
    end = start + Math.floor((end - start) / g) * g;
  }
  return { start, end };
}

/** Storage bytes of `name` for a cache of this shape (the formula the codecs report). */
export function baselineBytes(name: BaselineName, shape: CacheShape, options: BaselineOptions = {}): number {
  const { layers, kvHeads: H, tokens } = shape;
  const { start, end } = quantizedRange(name, tokens, options);
  const q = end - start;
  const fp16Tokens = tokens - q;
  // One (layer, kind) of heads D wide (keys headDim, values valueDim).
  const kindBytes = (kind: 'key' | 'value', D: number): number => {
    const fp16Bytes = fp16Tokens * H * D * 2;
    switch (name) {
      case 'fp16':
        return fp16Bytes;
      case 'int8':
      case 'int4': {
        const bits = name === 'int8' ? 8 : 4;
        // Codes of one (layer, kind) are packed as one bit stream; fp16 scale + offset per token and head.
        return Math.ceil((q * H * D * bits) / 8) + q * H * 4 + fp16Bytes;
      }
      case 'kivi2': {
        const g = options.groupSize ?? KIVI_DEFAULT_GROUP;
        const codes = Math.ceil((q * H * D * 2) / 8);
        // Keys: one scale + zero per (token group, head, channel). Values: per (token, head, channel group).
        const scales = kind === 'key' ? (q / g) * H * D * 4 : q * H * Math.ceil(D / Math.min(g, D)) * 4;
        return codes + scales + fp16Bytes;
      }
    }
  };
  return layers * (kindBytes('key', shape.headDim) + kindBytes('value', shape.valueDim ?? shape.headDim));
}

/**
 * Affine min/max quantization of `n` values at src[off + k*stride], written back
 * dequantized into dst; scale and offset are rounded to fp16 first, as stored.
 */
function quantizeStrided(src: Float32Array, dst: Float32Array, off: number, stride: number, n: number, levels: number): void {
  let lo = Infinity;
  let hi = -Infinity;
  for (let k = 0; k < n; k++) {
    const v = src[off + k * stride];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const zero = fp16(lo);
  const scale = fp16((hi - zero) / levels);
  for (let k = 0; k < n; k++) {
    const i = off + k * stride;
    let code = scale > 0 ? Math.round((src[i] - zero) / scale) : 0;
    if (code < 0) code = 0;
    else if (code > levels) code = levels;
    dst[i] = zero + code * scale;
  }
}

function copyToFp16(src: Float32Array, dst: Float32Array, H: number, T: number, D: number, t0: number, t1: number): void {
  for (let h = 0; h < H; h++) {
    for (let i = (h * T + t0) * D; i < (h * T + t1) * D; i++) dst[i] = fp16(src[i]);
  }
}

// One layer's keys or values: Float32Array [kvHeads, tokens, headDim].
type Tensor = Float32Array;

function perTokenQuant(x: Tensor, H: number, T: number, D: number, start: number, end: number, bits: number): Tensor {
  const out = new Float32Array(x.length);
  copyToFp16(x, out, H, T, D, 0, start);
  copyToFp16(x, out, H, T, D, end, T);
  const levels = (1 << bits) - 1;
  for (let h = 0; h < H; h++) {
    for (let t = start; t < end; t++) quantizeStrided(x, out, (h * T + t) * D, 1, D, levels);
  }
  return out;
}

function kiviKeys(x: Tensor, H: number, T: number, D: number, start: number, end: number, g: number): Tensor {
  const out = new Float32Array(x.length);
  copyToFp16(x, out, H, T, D, 0, start);
  copyToFp16(x, out, H, T, D, end, T);
  for (let h = 0; h < H; h++) {
    for (let t = start; t < end; t += g) {
      // Per channel: the g tokens of this group, stride D apart.
      for (let d = 0; d < D; d++) quantizeStrided(x, out, (h * T + t) * D + d, D, g, 3);
    }
  }
  return out;
}

function kiviValues(x: Tensor, H: number, T: number, D: number, start: number, end: number, g: number): Tensor {
  const out = new Float32Array(x.length);
  copyToFp16(x, out, H, T, D, 0, start);
  copyToFp16(x, out, H, T, D, end, T);
  const cg = Math.min(g, D);
  for (let h = 0; h < H; h++) {
    for (let t = start; t < end; t++) {
      const base = (h * T + t) * D;
      for (let d = 0; d < D; d += cg) quantizeStrided(x, out, base + d, 1, Math.min(cg, D - d), 3);
    }
  }
  return out;
}

/** Run one baseline codec on `cache`. */
export function runBaseline(name: BaselineName, cache: KvCache, options: BaselineOptions = {}): BaselineResult {
  const { kvHeads: H, tokens: T, headDim: D } = cache;
  const DV = cache.valueDim ?? D;
  const g = options.groupSize ?? KIVI_DEFAULT_GROUP;
  invariant(Number.isInteger(g) && g >= 1, `Error in baseline ${name}: groupSize must be a positive integer, got ${g}`);
  for (let l = 0; l < cache.layers; l++) {
    invariant(
      cache.keys[l].length === H * T * D && cache.values[l].length === H * T * DV,
      `Error in baseline ${name}: layer ${l} keys/values have ${cache.keys[l].length}/${cache.values[l].length} values, expected [${H}, ${T}, ${D}] / [${H}, ${T}, ${DV}]`,
    );
  }
  const { start, end } = quantizedRange(name, T, options);
  let encodeKeys: (x: Tensor) => Tensor;
  let encodeValues: (x: Tensor) => Tensor;
  switch (name) {
    case 'fp16':
      encodeKeys = encodeValues = (x) => x.map(fp16);
      break;
    case 'int8':
    case 'int4': {
      const bits = name === 'int8' ? 8 : 4;
      encodeKeys = (x) => perTokenQuant(x, H, T, D, start, end, bits);
      encodeValues = (x) => perTokenQuant(x, H, T, DV, start, end, bits);
      break;
    }
    case 'kivi2':
      encodeKeys = (x) => kiviKeys(x, H, T, D, start, end, g);
      encodeValues = (x) => kiviValues(x, H, T, DV, start, end, g);
      break;
  }
  return {
    name,
    cache: { ...cache, keys: cache.keys.map(encodeKeys), values: cache.values.map(encodeValues) },
    bytes: baselineBytes(name, cache, options),
  };
}

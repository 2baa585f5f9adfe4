// Tested by test/gguf/quants.test.ts (against fixtures from gguf-py's gguf.quants.dequantize).
/**
 * ggml block formats → float32, element for element as gguf-py's `gguf.quants.dequantize` (and
 * ggml's dequantize_row_*) computes them. Each format stores blocks of `blockSize` weights in
 * `typeSize` bytes: fp16 scales (and mins) with packed small integers. The arithmetic is float32:
 * every product and difference is rounded with Math.fround in the reference's order (e.g. Q4_K is
 * (d·sc)·q − dmin·m), which makes the result bit-identical, not merely close.
 *
 * Layouts (ggml-common.h; all little-endian, QK_K = 256):
 *   Q4_0  d:f16, qs[16]            x = d·(q−8); q of element j<16 is qs[j]&15, of j+16 is qs[j]>>4
 *   Q4_1  d, m:f16, qs[16]         x = d·q + m
 *   Q5_0  d, qh:u32, qs[16]        q = nibble | bit j of qh << 4;  x = d·(q−16)
 *   Q5_1  d, m, qh:u32, qs[16]     x = d·q + m
 *   Q8_0  d, qs:i8[32]             x = d·q
 *   Q2_K  scales[16], qs[64], d, dmin
 *   Q3_K  hmask[32], qs[64], scales[12] (6-bit), d
 *   Q4_K  d, dmin, scales[12] (8 × 6-bit scale and min), qs[128]
 *   Q5_K  d, dmin, scales[12], qh[32], qs[128]
 *   Q6_K  ql[128], qh[64], scales:i8[16], d
 */
import { halfToFloat } from '../io/fp16.js';
import type { GgmlTypeInfo } from './types.js';

const fr = Math.fround;

type Dequant = (src: Uint8Array, blocks: number, dst: Float32Array) => void;

const h16 = (b: Uint8Array, o: number) => halfToFloat(b[o] | (b[o + 1] << 8));
const i8 = (v: number) => (v << 24) >> 24;

function f32(src: Uint8Array, n: number, dst: Float32Array): void {
  // Copying bytes keeps NaN payloads as stored; every platform Node runs on is little-endian.
  new Uint8Array(dst.buffer, dst.byteOffset, n * 4).set(src.subarray(0, n * 4));
}

function f16(src: Uint8Array, n: number, dst: Float32Array): void {
  for (let i = 0; i < n; i++) dst[i] = h16(src, 2 * i);
}

function bf16(src: Uint8Array, n: number, dst: Float32Array): void {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, n);
  for (let i = 0; i < n; i++) bits[i] = ((src[2 * i] | (src[2 * i + 1] << 8)) << 16) >>> 0;
}

function f64(src: Uint8Array, n: number, dst: Float32Array): void {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0; i < n; i++) dst[i] = dv.getFloat64(8 * i, true);
}

function q4_0(src: Uint8Array, blocks: number, dst: Float32Array): void {
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 18, y += 32) {
    const d = h16(src, o);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 2 + j];
      dst[y + j] = fr(d * ((q & 15) - 8));
      dst[y + j + 16] = fr(d * ((q >> 4) - 8));
    }
  }
}

function q4_1(src: Uint8Array, blocks: number, dst: Float32Array): void {
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 20, y += 32) {
    const d = h16(src, o);
    const m = h16(src, o + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[o + 4 + j];
      dst[y + j] = fr(fr(d * (q & 15)) + m);
      dst[y + j + 16] = fr(fr(d * (q >> 4)) + m);
    }
  }
}

function q5_0(src: Uint8Array, blocks: number, dst: Float32Array): void {
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 22, y += 32) {
    const d = h16(src, o);
    const qh = (src[o + 2] | (src[o + 3] << 8) | (src[o + 4] << 16) | (src[o + 5] << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const q = src[o + 6 + j];
      dst[y + j] = fr(d * (((q & 15) | (((qh >>> j) & 1) << 4)) - 16));
      dst[y + j + 16] = fr(d * (((q >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16));
    }
  }
}

function q5_1(src: Uint8Array, blocks: number, dst: Float32Array): void {
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 24, y += 32) {
    const d = h16(src, o);
    const m = h16(src, o + 2);
    const qh = (src[o + 4] | (src[o + 5] << 8) | (src[o + 6] << 16) | (src[o + 7] << 24)) >>> 0;
    for (let j = 0; j < 16; j++) {
      const q = src[o + 8 + j];
      dst[y + j] = fr(fr(d * ((q & 15) | (((qh >>> j) & 1) << 4))) + m);
      dst[y + j + 16] = fr(fr(d * ((q >> 4) | (((qh >>> (j + 16)) & 1) << 4))) + m);
    }
  }
}

function q8_0(src: Uint8Array, blocks: number, dst: Float32Array): void {
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 34, y += 32) {
    const d = h16(src, o);
    for (let j = 0; j < 32; j++) dst[y + j] = fr(d * i8(src[o + 2 + j]));
  }
}

function q2_K(src: Uint8Array, blocks: number, dst: Float32Array): void {
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 84, y += 256) {
    const d = h16(src, o + 80);
    const dmin = h16(src, o + 82);
    // element f = h·128 + s·32 + l holds bits 2s..2s+1 of qs[h·32 + l]; its group of 16 is f >> 4
    for (let f = 0; f < 256; f++) {
      const h = f >> 7;
      const s = (f >> 5) & 3;
      const l = f & 31;
      const sc = src[o + (f >> 4)];
      const q = (src[o + 16 + h * 32 + l] >> (2 * s)) & 3;
      dst[y + f] = fr(fr(fr(d * (sc & 15)) * q) - fr(dmin * (sc >> 4)));
    }
  }
}

function q3_K(src: Uint8Array, blocks: number, dst: Float32Array): void {
  const dl = new Float32Array(16);
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 110, y += 256) {
    const d = h16(src, o + 108);
    const sc = o + 96;
    // 16 six-bit scales: low nibbles in bytes 0-7 (scale k·8+i is byte i >> 4k), high 2-bit pairs in bytes 8-11
    for (let j = 0; j < 16; j++) {
      const lo = (src[sc + (j & 7)] >> (4 * (j >> 3))) & 15;
      const hi = (src[sc + 8 + (j & 3)] >> (2 * (j >> 2))) & 3;
      dl[j] = fr(d * ((lo | (hi << 4)) - 32));
    }
    for (let f = 0; f < 256; f++) {
      const h = f >> 7;
      const s = (f >> 5) & 3;
      const l = f & 31;
      const ql = (src[o + 32 + h * 32 + l] >> (2 * s)) & 3;
      // the high bit of element f is bit (f >> 5) of hmask[l]; a set bit means no −4 offset
      const hbit = (src[o + l] >> (f >> 5)) & 1;
      dst[y + f] = fr(dl[f >> 4] * (ql - (hbit ? 0 : 4)));
    }
  }
}

/** Q4_K/Q5_K scales: 8 six-bit scales and mins packed in 12 bytes (ggml's get_scale_min_k4). */
function scaleMinK4(src: Uint8Array, s: number, d: number, dmin: number, sc: Float32Array, mn: Float32Array): void {
  for (let j = 0; j < 4; j++) {
    sc[j] = fr(d * (src[s + j] & 63));
    mn[j] = fr(dmin * (src[s + 4 + j] & 63));
    sc[j + 4] = fr(d * ((src[s + 8 + j] & 15) | ((src[s + j] >> 2) & 0x30)));
    mn[j + 4] = fr(dmin * ((src[s + 8 + j] >> 4) | ((src[s + 4 + j] >> 2) & 0x30)));
  }
}

function q4_K(src: Uint8Array, blocks: number, dst: Float32Array): void {
  const sc = new Float32Array(8);
  const mn = new Float32Array(8);
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 144, y += 256) {
    scaleMinK4(src, o + 4, h16(src, o), h16(src, o + 2), sc, mn);
    // 4 chunks of 32 bytes; chunk c gives group 2c (low nibbles) and 2c+1 (high nibbles)
    for (let c = 0; c < 4; c++) {
      for (let l = 0; l < 32; l++) {
        const q = src[o + 16 + c * 32 + l];
        dst[y + c * 64 + l] = fr(fr(sc[2 * c] * (q & 15)) - mn[2 * c]);
        dst[y + c * 64 + 32 + l] = fr(fr(sc[2 * c + 1] * (q >> 4)) - mn[2 * c + 1]);
      }
    }
  }
}

function q5_K(src: Uint8Array, blocks: number, dst: Float32Array): void {
  const sc = new Float32Array(8);
  const mn = new Float32Array(8);
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 176, y += 256) {
    scaleMinK4(src, o + 4, h16(src, o), h16(src, o + 2), sc, mn);
    for (let c = 0; c < 4; c++) {
      for (let l = 0; l < 32; l++) {
        const q = src[o + 48 + c * 32 + l];
        const qh = src[o + 16 + l];
        const g0 = 2 * c;
        const g1 = 2 * c + 1;
        dst[y + c * 64 + l] = fr(fr(sc[g0] * ((q & 15) | (((qh >> g0) & 1) << 4))) - mn[g0]);
        dst[y + c * 64 + 32 + l] = fr(fr(sc[g1] * ((q >> 4) | (((qh >> g1) & 1) << 4))) - mn[g1]);
      }
    }
  }
}

function q6_K(src: Uint8Array, blocks: number, dst: Float32Array): void {
  const ds = new Float32Array(16);
  for (let b = 0, o = 0, y = 0; b < blocks; b++, o += 210, y += 256) {
    const d = h16(src, o + 208);
    for (let j = 0; j < 16; j++) ds[j] = fr(d * i8(src[o + 192 + j]));
    // element f = h·128 + r: low 4 bits from ql[h·64 + (r & 63)] (nibble r >> 6), high 2 from qh[h·32 + (r & 31)] (pair r >> 5)
    for (let f = 0; f < 256; f++) {
      const h = f >> 7;
      const r = f & 127;
      const lo = (src[o + h * 64 + (r & 63)] >> (4 * (r >> 6))) & 15;
      const hi = (src[o + 128 + h * 32 + (r & 31)] >> (2 * (r >> 5))) & 3;
      dst[y + f] = fr(ds[f >> 4] * ((lo | (hi << 4)) - 32));
    }
  }
}

/** Element-wise types take element counts; block types take block counts. */
const DEQUANT: Record<string, Dequant> = {
  F32: f32,
  F16: f16,
  BF16: bf16,
  F64: f64,
  Q4_0: q4_0,
  Q4_1: q4_1,
  Q5_0: q5_0,
  Q5_1: q5_1,
  Q8_0: q8_0,
  Q2_K: q2_K,
  Q3_K: q3_K,
  Q4_K: q4_K,
  Q5_K: q5_K,
  Q6_K: q6_K,
};

/** Names of the ggml types kvtc dequantizes, for error messages. */
export const DEQUANT_TYPES: readonly string[] = Object.keys(DEQUANT);

export function canDequantize(type: GgmlTypeInfo): boolean {
  return type.name in DEQUANT;
}

/**
 * Dequantizes `elements` values of `type` from `src` (exactly elements / blockSize · typeSize bytes)
 * into float32, in stored order. The caller checks the type is supported and the sizes agree
 * (readTensor does); a mismatch here is a kvtc bug.
 */
export function dequantize(type: GgmlTypeInfo, src: Uint8Array, elements: number, dst = new Float32Array(elements)): Float32Array {
  const fn = DEQUANT[type.name];
  if (!fn) throw new Error(`dequantize: no dequantizer for ggml type ${type.name}`);
  const blocks = elements / type.blockSize;
  if (!Number.isInteger(blocks) || src.byteLength !== blocks * type.typeSize || dst.length < elements) {
    throw new Error(
      `dequantize: ${type.name} of ${elements} elements needs ${blocks * type.typeSize} bytes and ${elements} outputs, got ${src.byteLength} and ${dst.length}`,
    );
  }
  fn(src, blocks, dst);
  return dst;
}

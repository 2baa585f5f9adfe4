/**
 * An exact TypeScript emulation of the arithmetic of NVIDIA Dynamo's KVTC CUDA kernels
 * (repository ai-dynamo/dynamo, folder lib/kvbm-kernels). Nothing here is their code: each
 * function re-derives, in our own words, what the cited kernel computes, so that kvtc can fit
 * profiles against the errors those kernels really make and check an export without a GPU.
 *
 * Sources read (the versions the public index holds; docs/dynamo.md lists the facts):
 *   cuda/kvtc_kernels.cu   (3f160eab9322e90b6c3e3eda006a0093f36bfa39)
 *   src/kvtc_kernels.rs    (8ad5982df758b6a495ea56348ea4e3a622089fef)
 *   docs/kvtc-design.md    (d71489256646014b633cd071fac95782cf793a49)
 *
 * Pipeline (kvtc_kernels.rs `kvtc_compress` / `kvtc_decompress`), one row = one KV block of
 * one layer and one of K/V, `features` = kv_heads · head_dim · tokens_per_block elements:
 *   compress:   x̃ = f32(x) − mean                     (kvtc_gather_mean_subtract_kernel)
 *               y = x̃ · projection                     (cublasSgemm_v2, [features, k] row-major)
 *               per range: FP8 cast, or per-row min/max IntX with bit packing
 *   decompress: ŷ = dequantize                          (kvtc_dequantize_{fp8,intx}_kernel)
 *               x̂ = ŷ · projectionᵀ                    (cublasSgemm_v2, OP_T)
 *               out = T(x̂ + mean)                      (kvtc_mean_add_scatter_kernel)
 *
 * Exactness: every elementwise step is bit-exact (float32 via Math.fround, in the kernels'
 * operation order; nvcc's defaults — no fast-math, IEEE division, no FTZ — leave no fusable
 * multiply-add in these expressions). The two SGEMMs are emulated as float64 sums of the exact
 * float32 products rounded once to float32; cuBLAS picks its own reduction order, so its
 * results can differ in the last bits, and a coefficient that lands within an ulp of a
 * rounding boundary may get the neighbouring code there. Everything downstream of the codes is
 * again exact.
 */
import { KvtcError } from '../errors.js';
import { floatToHalf, halfToFloat } from '../io/fp16.js';
import { FP8_TO_FLOAT, floatToFp8 } from '../codec/fp8.js';
import { gemmABt } from '../math/gemm.js';

/** KvtcQuantType (kvtc_kernels.rs): Fp8 = 0, IntX = 1. */
export type KvtcQuantType = 'Fp8' | 'IntX';
export const QUANT_TYPE_CODE: Record<KvtcQuantType, number> = { Fp8: 0, IntX: 1 };
export const QUANT_TYPES: readonly KvtcQuantType[] = ['Fp8', 'IntX'];

/** KvtcTypeRange (kvtc_kernels.rs), field for field: PCA components [start_idx, end_idx). */
export interface KvtcTypeRange {
  start_idx: number;
  end_idx: number;
  quant_type: KvtcQuantType;
  /** 0 for fp8; 1, 2, 4 or 8 for IntX (the launchers accept int_bits with 8 % int_bits = 0). */
  int_bits: number;
}

/** KvtcConfig (kvtc_kernels.rs) with host arrays in place of device pointers. */
export interface KvtcConfigData {
  /** Float32Array // [features] */
  mean: Float32Array;
  /** Float32Array // [features, pca_components], row-major */
  projection: Float32Array;
  features: number;
  pca_components: number;
  ranges: KvtcTypeRange[];
}

/**
 * Which FP8 cast the GPU runs. kvtc_quantize_fp8_kernel uses the cuda_fp8.h intrinsic
 * `__nv_cvt_float_to_fp8(val, __NV_SATFINITE, __NV_E4M3)` when `__CUDA_ARCH__ >= 890` and a
 * software bit manipulation otherwise; build.rs compiles SASS for sm_80, 86, 89, 90, 100, 120,
 * so Ampere (A100, A10, RTX 30) runs the software path and Ada / Hopper / Blackwell the
 * intrinsic. The design doc says both "produce identical results"; they do not everywhere
 * (fp8EncodeSm80 below), so the path is a setting.
 */
export type Fp8Path = 'sm89' | 'sm80';
export const FP8_PATHS: readonly Fp8Path[] = ['sm89', 'sm80'];

/** TensorDataType (kvtc_kernels.rs) of the blocks the gather reads and the scatter writes. */
export type BlockDtype = 'f16' | 'bf16' | 'f32';

/** size_of::<KvtcRangeHeader>() — i32 quant_type, i32 int_bits, u64 start/end/packed/metadata. */
export const RANGE_HEADER_BYTES = 40;

const FLT_MAX = 3.4028234663852886e38;
const TINY_INTERVAL = Math.fround(1e-10);
const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

function invalidConfig(message: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('PROFILE_INVALID', message, {
    fix: 'Use a configuration written by `kvtc calibrate --target dynamo` / `kvtc export --format dynamo`.',
    context,
  });
}

// ---------------------------------------------------------------------------------------------
// FP8 E4M3FN
// ---------------------------------------------------------------------------------------------

/**
 * kvtc_quantize_fp8_kernel, `__CUDA_ARCH__ >= 890` branch: `__nv_cvt_float_to_fp8` with
 * __NV_SATFINITE / __NV_E4M3 — round to nearest even, finite values and ±∞ saturate to ±448,
 * NaN → 0x7F, no scaling. That is exactly kvtc's own encoder (src/codec/fp8.ts) applied to the
 * float32 value.
 */
export function fp8EncodeSm89(v: number): number {
  return floatToFp8(Math.fround(v));
}

/**
 * kvtc_quantize_fp8_kernel, `#else` branch (pre-SM89 GPUs), step for step: NaN → 0x7F; the sign
 * is taken with `val < 0` (so −0 encodes as +0); |val| > 448 clamps to 448; the float32 exponent
 * is re-biased (fp8_exp = e − 127 + 7); fp8_exp ≤ 0 is the subnormal branch (right shift of the
 * 24-bit significand by 20 + (1 − fp8_exp), round to nearest even with a sticky bit, zero when
 * the shift reaches 24); fp8_exp ≥ 15 saturates to 0x7E; otherwise the 23-bit mantissa rounds to
 * 3 bits (RNE), a carry out of the mantissa increments the exponent and saturates at 15.
 *
 * Differences from the intrinsic that follow from those steps: every |x| whose correctly
 * rounded value is ≥ 256 (|x| ≥ 248) becomes ±448, because exponent field 15 (256..448, valid in
 * E4M3FN) is treated as overflow; and |x| in (2⁻¹⁰, 2⁻⁹) flushes to 0 instead of rounding up to
 * the smallest subnormal 2⁻⁹.
 */
export function fp8EncodeSm80(v: number): number {
  let val = Math.fround(v);
  if (val !== val) return 0x7f;
  let sign = 0;
  if (val < 0) {
    sign = 1;
    val = -val;
  }
  if (val === 0) return sign << 7;
  if (val > 448) val = 448;
  F32[0] = val;
  const fbits = U32[0];
  const fp32Exp = (fbits >>> 23) & 0xff;
  const fp32Mant = fbits & 0x7fffff;
  let fp8Exp = fp32Exp - 127 + 7;
  if (fp8Exp <= 0) {
    const shift = 1 - fp8Exp;
    const fullMant = fp32Mant | 0x800000;
    const totalShift = 20 + shift;
    if (totalShift >= 24) return sign << 7;
    let shifted = fullMant >>> totalShift;
    const roundBit = totalShift > 0 ? (fullMant >>> (totalShift - 1)) & 1 : 0;
    const sticky = totalShift > 1 ? fullMant & ((1 << (totalShift - 1)) - 1) : 0;
    if (roundBit && (sticky || shifted & 1)) shifted += 1;
    return shifted >= 8 ? (sign << 7) | (1 << 3) : (sign << 7) | shifted;
  }
  if (fp8Exp >= 15) return (sign << 7) | 0x7e;
  let mant3 = fp32Mant >>> 20;
  const roundBit = (fp32Mant >>> 19) & 1;
  const sticky = fp32Mant & 0x7ffff;
  if (roundBit && (sticky || mant3 & 1)) mant3 += 1;
  if (mant3 >= 8) {
    mant3 = 0;
    fp8Exp += 1;
    if (fp8Exp >= 15) return (sign << 7) | 0x7e;
  }
  return (sign << 7) | (fp8Exp << 3) | mant3;
}

export function fp8Encoder(path: Fp8Path): (v: number) => number {
  return path === 'sm80' ? fp8EncodeSm80 : fp8EncodeSm89;
}

/**
 * kvtc_dequantize_fp8_kernel: `__nv_cvt_fp8_to_halfraw` then half → float on SM89+, or the
 * software decode (exponent 15 with mantissa 7 is NaN, subnormals 2⁻⁶·m/8, normals
 * 2^(e−7)·(1 + m/8)) before. Every E4M3 value is exact in fp16 and float32, so both are the
 * plain E4M3FN value of the code.
 */
export function fp8Decode(code: number): number {
  return FP8_TO_FLOAT[code & 0xff];
}

// ---------------------------------------------------------------------------------------------
// IntX
// ---------------------------------------------------------------------------------------------

/** roundf: half away from zero (exact in float64 for float32 inputs). */
function roundf(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

/** The interval a row's IntX range is quantized with (both intx kernels). */
export function intxInterval(min: number, max: number): number {
  const interval = Math.fround(max - min);
  return interval < TINY_INTERVAL ? 1 : interval;
}

/**
 * kvtc_quantize_intx_kernel, one value: normalized = (val − min) / interval · max_quant in
 * float32, roundf, clamped to [0, max_quant] (NaN → 0: the float → integer conversion the
 * kernel's `(uint8_t)rounded` compiles to).
 */
export function intxCode(val: number, min: number, interval: number, maxQuant: number): number {
  const normalized = Math.fround(Math.fround(Math.fround(val - min) / interval) * maxQuant);
  let rounded = roundf(normalized);
  if (rounded < 0) rounded = 0;
  if (rounded > maxQuant) rounded = maxQuant;
  return rounded === rounded ? rounded : 0;
}

/** kvtc_dequantize_intx_kernel, one value: (float)q · interval / (float)max_quant + min, float32. */
export function intxValue(q: number, min: number, interval: number, maxQuant: number): number {
  return Math.fround(Math.fround(Math.fround(q * interval) / maxQuant) + min);
}

/**
 * kvtc_minmax_reduce_kernel: per row, min and max of columns [start, start + width) of the
 * [batch, total] input, starting from FLT_MAX / −FLT_MAX with `<` / `>` (NaN never wins).
 * The kernel's tree reduction order cannot change a min or a max.
 */
export function minmaxReduce(
  input: Float32Array,
  batch: number,
  total: number,
  start: number,
  width: number,
): { min: Float32Array; max: Float32Array } {
  const min = new Float32Array(batch);
  const max = new Float32Array(batch);
  for (let r = 0; r < batch; r++) {
    let lo = FLT_MAX;
    let hi = -FLT_MAX;
    const o = r * total + start;
    for (let i = 0; i < width; i++) {
      const v = input[o + i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    min[r] = lo;
    max[r] = hi;
  }
  return { min, max };
}

/** 8 / int_bits values per byte (kvtc_quantize_intx_kernel `slots_per_byte`). */
export function slotsPerByte(intBits: number): number {
  return 8 / intBits;
}

/**
 * The packed layout both intx kernels share: row r's codes LSB-first, `slots_per_byte` per byte,
 * each row starting on a byte boundary (bytes_per_row = ⌈width / slots⌉). Calls `row` once per
 * row with its range's min and interval and where its bytes start.
 */
function eachIntxRow(
  min: Float32Array,
  max: Float32Array,
  batch: number,
  width: number,
  intBits: number,
  row: (r: number, lo: number, interval: number, byteOff: number, layout: IntxLayout) => void,
): void {
  const slots = slotsPerByte(intBits);
  const layout: IntxLayout = { slots, bytesPerRow: Math.ceil(width / slots), maxQuant: (1 << intBits) - 1, intBits, width };
  for (let r = 0; r < batch; r++) row(r, min[r], intxInterval(min[r], max[r]), r * layout.bytesPerRow, layout);
}

interface IntxLayout {
  slots: number;
  bytesPerRow: number;
  maxQuant: number;
  intBits: number;
  width: number;
}

/** kvtc_quantize_intx_kernel: columns [start, start + width) of each row, packed into out[outOff ...]. */
export function quantizeIntx(
  input: Float32Array,
  min: Float32Array,
  max: Float32Array,
  out: Uint8Array,
  outOff: number,
  batch: number,
  total: number,
  start: number,
  width: number,
  intBits: number,
): void {
  eachIntxRow(min, max, batch, width, intBits, (r, lo, interval, byteOff, { slots, bytesPerRow, maxQuant }) => {
    const src = r * total + start;
    for (let b = 0; b < bytesPerRow; b++) {
      let packed = 0;
      for (let s = 0, col = b * slots; s < slots && col < width; s++, col++)
        packed |= intxCode(input[src + col], lo, interval, maxQuant) << (s * intBits);
      out[outOff + byteOff + b] = packed & 0xff;
    }
  });
}

/** kvtc_dequantize_intx_kernel: the inverse of quantizeIntx into columns [start, start + width). */
export function dequantizeIntx(
  packed: Uint8Array,
  packedOff: number,
  min: Float32Array,
  max: Float32Array,
  out: Float32Array,
  batch: number,
  total: number,
  start: number,
  width: number,
  intBits: number,
): void {
  eachIntxRow(min, max, batch, width, intBits, (r, lo, interval, byteOff, { slots, bytesPerRow, maxQuant }) => {
    const dst = r * total + start;
    for (let b = 0; b < bytesPerRow; b++) {
      const byte = packed[packedOff + byteOff + b];
      for (let s = 0, col = b * slots; s < slots && col < width; s++, col++)
        out[dst + col] = intxValue((byte >>> (s * intBits)) & maxQuant, lo, interval, maxQuant);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Sizes and the self-describing buffer (kvtc_kernels.rs)
// ---------------------------------------------------------------------------------------------

/** kvtc_range_packed_size: fp8 one byte per value; IntX ⌈batch · width / slots⌉ bytes. */
export function rangePackedSize(range: KvtcTypeRange, batch: number): number {
  const n = batch * (range.end_idx - range.start_idx);
  return range.quant_type === 'Fp8' ? n : Math.ceil(n / slotsPerByte(range.int_bits));
}

/** kvtc_range_metadata_size: IntX stores a float32 min and max per row; fp8 nothing. */
export function rangeMetadataSize(range: KvtcTypeRange, batch: number): number {
  return range.quant_type === 'Fp8' ? 0 : batch * 2 * 4;
}

/** kvtc_compressed_size: Σ over ranges of header + metadata + packed data. */
export function compressedSize(ranges: readonly KvtcTypeRange[], batch: number): number {
  let s = 0;
  for (const r of ranges) s += RANGE_HEADER_BYTES + rangeMetadataSize(r, batch) + rangePackedSize(r, batch);
  return s;
}

/** Bytes one row costs, headers left out (they are per call, not per row). */
export function rowBytes(ranges: readonly KvtcTypeRange[]): number {
  let s = 0;
  for (const r of ranges) {
    const w = r.end_idx - r.start_idx;
    s += r.quant_type === 'Fp8' ? w : 8 + Math.ceil(w / slotsPerByte(r.int_bits));
  }
  return s;
}

/**
 * The ranges the kernels can run correctly, checked: contiguous from 0 to pca_components, each
 * non-empty; fp8 with int_bits 0; IntX with int_bits 1, 2, 4 or 8 and a width that is a
 * multiple of 8 / int_bits. The last rule is not the kernels' own check: kvtc_range_packed_size
 * reserves ⌈batch·width/slots⌉ bytes, but kvtc_quantize_intx_kernel writes batch·⌈width/slots⌉
 * (each row starts on a byte), so any other width overruns into the next range's header once
 * batch > 1, and decompression reads from misaligned offsets.
 */
export function checkRanges(ranges: readonly KvtcTypeRange[], pcaComponents: number, where = 'configuration'): void {
  let at = 0;
  for (const [i, r] of ranges.entries()) {
    const ctx = { range: i, ...r };
    if (r.start_idx !== at)
      throw invalidConfig(`${where}: range ${i} starts at ${r.start_idx}, expected ${at} (ranges must be contiguous from 0)`, ctx);
    if (!(r.end_idx > r.start_idx)) throw invalidConfig(`${where}: range ${i} [${r.start_idx}, ${r.end_idx}) is empty`, ctx);
    if (r.quant_type === 'Fp8') {
      if (r.int_bits !== 0) throw invalidConfig(`${where}: fp8 range ${i} has int_bits ${r.int_bits}, expected 0`, ctx);
    } else if (r.quant_type === 'IntX') {
      if (![1, 2, 4, 8].includes(r.int_bits))
        throw invalidConfig(`${where}: IntX range ${i} has int_bits ${r.int_bits}; the kernels take 1, 2, 4 or 8`, ctx);
      const slots = slotsPerByte(r.int_bits);
      if ((r.end_idx - r.start_idx) % slots !== 0) {
        throw invalidConfig(
          `${where}: IntX(${r.int_bits}) range ${i} is ${r.end_idx - r.start_idx} components wide, not a multiple of ${slots}; the kernels' packed-size helper and their packing kernel disagree for such widths (the buffer overruns)`,
          ctx,
        );
      }
    } else {
      throw invalidConfig(`${where}: range ${i} has quant_type ${JSON.stringify((r as { quant_type: unknown }).quant_type)}`, ctx);
    }
    at = r.end_idx;
  }
  if (at !== pcaComponents)
    throw invalidConfig(`${where}: ranges cover [0, ${at}), but pca_components is ${pcaComponents}`, { pca_components: pcaComponents });
}

/** Checks the shapes of a config (the kernels check nothing: a wrong size reads out of bounds). */
export function checkConfig(c: KvtcConfigData, where = 'configuration'): void {
  if (!(Number.isInteger(c.features) && c.features > 0)) throw invalidConfig(`${where}: features ${c.features} must be a positive integer`);
  if (!(Number.isInteger(c.pca_components) && c.pca_components > 0 && c.pca_components <= c.features)) {
    throw invalidConfig(`${where}: pca_components ${c.pca_components} must be in [1, features = ${c.features}]`);
  }
  if (c.mean.length !== c.features) throw invalidConfig(`${where}: mean has ${c.mean.length} values, features is ${c.features}`);
  if (c.projection.length !== c.features * c.pca_components) {
    throw invalidConfig(
      `${where}: projection has ${c.projection.length} values, expected features × pca_components = ${c.features} × ${c.pca_components}`,
    );
  }
  checkRanges(c.ranges, c.pca_components, where);
}

/**
 * kvtc_quantize_ranges: for each range, the 40-byte KvtcRangeHeader (little-endian, repr(C)),
 * then for IntX the batch float32 minima, the batch float32 maxima and the packed codes, for
 * fp8 the codes (row-major [batch, width]). `input` is the [batch, total] float32 projection.
 */
export function quantizeRanges(
  input: Float32Array,
  ranges: readonly KvtcTypeRange[],
  batch: number,
  total: number,
  fp8Path: Fp8Path = 'sm89',
): Uint8Array {
  const out = new Uint8Array(compressedSize(ranges, batch));
  const dv = new DataView(out.buffer);
  const enc = fp8Encoder(fp8Path);
  let offset = 0;
  for (const r of ranges) {
    const width = r.end_idx - r.start_idx;
    const packed = rangePackedSize(r, batch);
    const meta = rangeMetadataSize(r, batch);
    if (r.quant_type === 'IntX' && packed !== batch * Math.ceil(width / slotsPerByte(r.int_bits))) {
      throw invalidConfig(
        `IntX(${r.int_bits}) range [${r.start_idx}, ${r.end_idx}) has a width the kernels cannot pack without overrunning (see checkRanges)`,
      );
    }
    dv.setInt32(offset, QUANT_TYPE_CODE[r.quant_type], true);
    dv.setInt32(offset + 4, r.int_bits, true);
    dv.setBigUint64(offset + 8, BigInt(r.start_idx), true);
    dv.setBigUint64(offset + 16, BigInt(r.end_idx), true);
    dv.setBigUint64(offset + 24, BigInt(packed), true);
    dv.setBigUint64(offset + 32, BigInt(meta), true);
    offset += RANGE_HEADER_BYTES;
    if (r.quant_type === 'Fp8') {
      // kvtc_quantize_fp8_kernel: output[row · width + col] = fp8(input[row · total + start + col]).
      for (let row = 0; row < batch; row++) {
        const src = row * total + r.start_idx;
        for (let col = 0; col < width; col++) out[offset + row * width + col] = enc(input[src + col]);
      }
      offset += packed;
    } else {
      const { min, max } = minmaxReduce(input, batch, total, r.start_idx, width);
      for (let row = 0; row < batch; row++) {
        dv.setFloat32(offset + row * 4, min[row], true);
        dv.setFloat32(offset + (batch + row) * 4, max[row], true);
      }
      offset += meta;
      quantizeIntx(input, min, max, out, offset, batch, total, r.start_idx, width, r.int_bits);
      offset += packed;
    }
  }
  return out;
}

export interface RangeHeader {
  quant_type: number;
  int_bits: number;
  start_idx: number;
  end_idx: number;
  packed_data_bytes: number;
  metadata_bytes: number;
}

function badBuffer(message: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('BLOB_INVALID', `compressed buffer: ${message}`, {
    fix: 'Pass a buffer written by kvtc_compress (or its emulation) with the same configuration and block count; the kernels themselves would read it without any check.',
    context,
  });
}

/**
 * kvtc_dequantize_ranges: walks `ranges.length` headers (the count comes from the config, not
 * the buffer) and dequantizes each range into columns [start_idx, end_idx) of the [batch, total]
 * output. The kernels trust every header field; here each is checked against the config and the
 * buffer length first, so a truncated or foreign buffer is a typed error, not garbage.
 */
export function dequantizeRanges(buf: Uint8Array, ranges: readonly KvtcTypeRange[], batch: number, total: number): Float32Array {
  const out = new Float32Array(batch * total);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let offset = 0;
  for (const [i, r] of ranges.entries()) {
    if (offset + RANGE_HEADER_BYTES > buf.byteLength)
      throw badBuffer(`ends at byte ${buf.byteLength}, inside the header of range ${i}`, { range: i, bytes: buf.byteLength });
    const h = readRangeHeader(dv, offset);
    const want = {
      quant_type: QUANT_TYPE_CODE[r.quant_type],
      int_bits: r.int_bits,
      start_idx: r.start_idx,
      end_idx: r.end_idx,
      packed_data_bytes: rangePackedSize(r, batch),
      metadata_bytes: rangeMetadataSize(r, batch),
    };
    for (const k of Object.keys(want) as (keyof RangeHeader)[]) {
      if (h[k] !== want[k])
        throw badBuffer(`range ${i} header has ${k} = ${h[k]}, the configuration (for ${batch} blocks) gives ${want[k]}`, {
          range: i,
          field: k,
          got: h[k],
          expected: want[k],
        });
    }
    offset += RANGE_HEADER_BYTES;
    if (offset + h.metadata_bytes + h.packed_data_bytes > buf.byteLength)
      throw badBuffer(
        `range ${i} needs ${h.metadata_bytes + h.packed_data_bytes} bytes after its header; the buffer ends first (truncated?)`,
        { range: i },
      );
    const width = r.end_idx - r.start_idx;
    if (r.quant_type === 'Fp8') {
      for (let row = 0; row < batch; row++) {
        const dst = row * total + r.start_idx;
        for (let col = 0; col < width; col++) out[dst + col] = fp8Decode(buf[offset + row * width + col]);
      }
    } else {
      const min = new Float32Array(batch);
      const max = new Float32Array(batch);
      for (let row = 0; row < batch; row++) {
        min[row] = dv.getFloat32(offset + row * 4, true);
        max[row] = dv.getFloat32(offset + (batch + row) * 4, true);
      }
      dequantizeIntx(buf, offset + h.metadata_bytes, min, max, out, batch, total, r.start_idx, width, r.int_bits);
    }
    offset += h.metadata_bytes + h.packed_data_bytes;
  }
  if (offset !== buf.byteLength)
    throw badBuffer(`${buf.byteLength - offset} bytes follow the last range (another configuration or block count?)`, {
      bytes: buf.byteLength,
      used: offset,
    });
  return out;
}

export function readRangeHeader(dv: DataView, offset: number): RangeHeader {
  const u64 = (o: number) => {
    const v = dv.getBigUint64(offset + o, true);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
  };
  return {
    quant_type: dv.getInt32(offset, true),
    int_bits: dv.getInt32(offset + 4, true),
    start_idx: u64(8),
    end_idx: u64(16),
    packed_data_bytes: u64(24),
    metadata_bytes: u64(32),
  };
}

// ---------------------------------------------------------------------------------------------
// Gather, projection, reconstruction, scatter
// ---------------------------------------------------------------------------------------------

/** static_cast<T>(float): fp16 and bf16 round to nearest even (cuda_fp16.h / cuda_bf16.h). */
export function castToDtype(v: number, dtype: BlockDtype): number {
  if (dtype === 'f32') return Math.fround(v);
  if (dtype === 'f16') return halfToFloat(floatToHalf(v));
  F32[0] = v;
  const x = U32[0];
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return NaN;
  const rounded = (x + 0x7fff + ((x >>> 16) & 1)) >>> 0;
  U32[0] = rounded & 0xffff0000;
  return F32[0];
}

/** kvtc_gather_mean_subtract_kernel: centered[b, f] = float(block_b[f]) − mean[f], float32. */
export function gatherMeanSubtract(rows: Float32Array, mean: Float32Array, numBlocks: number, features: number): Float32Array {
  const out = new Float32Array(numBlocks * features);
  for (let b = 0; b < numBlocks; b++) {
    const o = b * features;
    for (let f = 0; f < features; f++) out[o + f] = rows[o + f] - mean[f];
  }
  return out;
}

/**
 * The compress SGEMM (kvtc_compress): pca_output[b, c] = Σ_f centered[b, f] · projection[f, c]
 * (row-major; cuBLAS sees column-major [pca, features] · [features, batch], both OP_N).
 * Emulated as float64 sums rounded to float32 (see the module note).
 */
export function projectRows(
  centered: Float32Array,
  projection: Float32Array,
  numBlocks: number,
  features: number,
  k: number,
): Float32Array {
  const A = Float64Array.from(centered.subarray(0, numBlocks * features));
  const Bt = new Float64Array(k * features); // projectionᵀ [k, features]
  for (let f = 0; f < features; f++) for (let c = 0; c < k; c++) Bt[c * features + f] = projection[f * k + c];
  return Float32Array.from(gemmABt(A, Bt, new Float64Array(numBlocks * k), numBlocks, k, features));
}

/**
 * The decompress SGEMM (kvtc_decompress): reconstructed[b, f] = Σ_c pca[b, c] · projection[f, c]
 * (cuBLAS: OP_T on the projection). Emulated as float64 sums rounded to float32.
 */
export function reconstructRows(pca: Float32Array, projection: Float32Array, numBlocks: number, features: number, k: number): Float32Array {
  const A = Float64Array.from(pca.subarray(0, numBlocks * k));
  const B = Float64Array.from(projection); // [features, k] is already B[n = features, k]
  return Float32Array.from(gemmABt(A, B, new Float64Array(numBlocks * features), numBlocks, features, k));
}

/** kvtc_mean_add_scatter_kernel: block_b[f] = T(reconstructed[b, f] + mean[f]) (float32 add). */
export function meanAddScatter(
  reconstructed: Float32Array,
  mean: Float32Array,
  numBlocks: number,
  features: number,
  dtype: BlockDtype,
): Float32Array {
  const out = new Float32Array(numBlocks * features);
  for (let b = 0; b < numBlocks; b++) {
    const o = b * features;
    for (let f = 0; f < features; f++) out[o + f] = castToDtype(Math.fround(reconstructed[o + f] + mean[f]), dtype);
  }
  return out;
}

/**
 * kvtc_compress on host arrays: rows Float32Array // [numBlocks, features] (each row one block's
 * elements in memory order, already as float32 — the gather's cast from fp16/bf16 is exact) →
 * the self-describing compressed buffer (kvtc_compressed_size bytes).
 */
export function kvtcCompress(rows: Float32Array, config: KvtcConfigData, numBlocks: number, fp8Path: Fp8Path = 'sm89'): Uint8Array {
  checkConfig(config);
  if (!(Number.isInteger(numBlocks) && numBlocks >= 0) || rows.length < numBlocks * config.features) {
    throw new KvtcError(
      'KV_INVALID',
      `kvtc_compress: ${rows.length} values do not hold ${numBlocks} blocks of ${config.features} features`,
      { fix: 'Pass whole blocks of features = kv_heads · head_dim · tokens_per_block values each.' },
    );
  }
  if (numBlocks === 0) return new Uint8Array(0); // kvtc_compress returns Ok(0) for no blocks
  const centered = gatherMeanSubtract(rows, config.mean, numBlocks, config.features);
  const pca = projectRows(centered, config.projection, numBlocks, config.features, config.pca_components);
  return quantizeRanges(pca, config.ranges, numBlocks, config.pca_components, fp8Path);
}

/** The dequantized PCA coefficients [numBlocks, pca_components] of a buffer (kvtc_dequantize_ranges). */
export function kvtcDequantize(buf: Uint8Array, config: KvtcConfigData, numBlocks: number): Float32Array {
  return dequantizeRanges(buf, config.ranges, numBlocks, config.pca_components);
}

/** kvtc_decompress on host arrays: buffer → rows [numBlocks, features] in the output dtype's values. */
export function kvtcDecompress(buf: Uint8Array, config: KvtcConfigData, numBlocks: number, dtype: BlockDtype = 'f32'): Float32Array {
  checkConfig(config);
  if (numBlocks === 0) return new Float32Array(0);
  const pca = kvtcDequantize(buf, config, numBlocks);
  const rec = reconstructRows(pca, config.projection, numBlocks, config.features, config.pca_components);
  return meanAddScatter(rec, config.mean, numBlocks, config.features, dtype);
}

/**
 * The emulation of Dynamo's KVTC kernels (src/dynamo/kernels.ts) against
 *  - an independent, straightforward reference written here from the kernels' documented math
 *    (docs/kvtc-design.md: FP8 E4M3FN direct cast, no scaling; IntX per-row min/max affine,
 *    2^b − 1 levels, LSB-first packing; mean subtract, x·P, ŷ·Pᵀ, mean add), and
 *  - the fixed vectors and bounds of their tests/kvtc_roundtrip.rs (same data generators).
 */
import { describe, expect, it } from 'vitest';
import {
  castToDtype,
  compressedSize,
  dequantizeRanges,
  fp8Decode,
  fp8EncodeSm80,
  fp8EncodeSm89,
  kvtcCompress,
  kvtcDecompress,
  minmaxReduce,
  quantizeRanges,
  RANGE_HEADER_BYTES,
  rowBytes,
  type KvtcConfigData,
  type KvtcTypeRange,
} from '../../src/dynamo/kernels.js';
import { isKvtcError } from '../../src/errors.js';
import { mulberry32 } from '../../src/random.js';

const f = Math.fround;

// ---------------------------------------------------------------- reference (independent)

/** E4M3FN value of a code from the format definition (bias 7, 3 mantissa bits, 0x7F/0xFF NaN). */
function refFp8Value(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const e = (code >> 3) & 15;
  const m = code & 7;
  if (e === 15 && m === 7) return NaN;
  return sign * (e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
}

/** Nearest finite E4M3 magnitude code to a ≥ 0 (ties to the even code), saturating at 448. */
function refRneMagnitude(a: number): number {
  let best = 0;
  for (let c = 1; c <= 126; c++) {
    const d = Math.abs(refFp8Value(c) - a);
    const db = Math.abs(refFp8Value(best) - a);
    if (d < db || (d === db && (c & 1) === 0)) best = c;
  }
  return best;
}

/** SM89+ intrinsic, as documented: RNE, satfinite, NaN → 0x7F. */
function refSm89(x: number): number {
  const v = f(x);
  if (Number.isNaN(v)) return 0x7f;
  const neg = v < 0 || Object.is(v, -0);
  const c = refRneMagnitude(Math.min(Math.abs(v), 448));
  return neg ? c | 0x80 : c;
}

/**
 * The pre-SM89 software cast, described by outcome: below 2⁻⁹ it flushes to zero, anything whose
 * RNE value is ≥ 256 becomes 448, otherwise RNE; the sign comes from `val < 0` (−0 → +0).
 */
function refSm80(x: number): number {
  const v = f(x);
  if (Number.isNaN(v)) return 0x7f;
  const a = Math.min(Math.abs(v), 448);
  let c = a < 2 ** -9 ? 0 : refRneMagnitude(a);
  if (refFp8Value(c) >= 256) c = 126;
  return v < 0 ? c | 0x80 : c;
}

/** IntX of one row, straightforwardly: codes and reconstructions. */
function refIntxRow(vals: number[], bits: number): { codes: number[]; out: number[]; min: number; max: number } {
  const min = vals.reduce((a, b) => (b < a ? b : a), Infinity);
  const max = vals.reduce((a, b) => (b > a ? b : a), -Infinity);
  const levels = 2 ** bits - 1;
  let interval = f(max - min);
  if (interval < f(1e-10)) interval = 1;
  const codes = vals.map((v) => {
    const n = f(f(f(v - min) / interval) * levels);
    return Math.min(levels, Math.max(0, Math.sign(n) * Math.floor(Math.abs(n) + 0.5)));
  });
  const out = codes.map((q) => f(f(f(q * interval) / levels) + min));
  return { codes, out, min, max };
}

function refPipeline(rows: Float32Array, c: KvtcConfigData, n: number): Float32Array {
  const { features: p, pca_components: k } = c;
  const y = new Float32Array(n * k);
  for (let b = 0; b < n; b++) {
    for (let j = 0; j < k; j++) {
      let s = 0;
      for (let i = 0; i < p; i++) s += f(rows[b * p + i] - c.mean[i]) * c.projection[i * k + j];
      y[b * k + j] = s;
    }
  }
  const yh = new Float32Array(n * k);
  for (const r of c.ranges) {
    for (let b = 0; b < n; b++) {
      const vals = Array.from(y.subarray(b * k + r.start_idx, b * k + r.end_idx));
      const dec = r.quant_type === 'Fp8' ? vals.map((v) => refFp8Value(refSm89(v))) : refIntxRow(vals, r.int_bits).out;
      yh.set(dec, b * k + r.start_idx);
    }
  }
  const out = new Float32Array(n * p);
  for (let b = 0; b < n; b++) {
    for (let i = 0; i < p; i++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += yh[b * k + j] * c.projection[i * k + j];
      out[b * p + i] = f(f(s) + c.mean[i]);
    }
  }
  return out;
}

/** Gram–Schmidt orthonormal [features, k] projection from their tests' deterministic basis. */
function gramSchmidtProjection(features: number, k: number, gen: (i: number, j: number) => number): Float32Array {
  const basis = Array.from({ length: k }, (_, i) => Array.from({ length: features }, (_, j) => gen(i, j)));
  for (let i = 0; i < k; i++) {
    for (let j = 0; j < i; j++) {
      const dot = basis[i].reduce((a, v, t) => a + v * basis[j][t], 0);
      for (let t = 0; t < features; t++) basis[i][t] -= dot * basis[j][t];
    }
    const norm = Math.sqrt(basis[i].reduce((a, v) => a + v * v, 0));
    for (let t = 0; t < features; t++) basis[i][t] /= norm;
  }
  const P = new Float32Array(features * k);
  for (let t = 0; t < features; t++) for (let c = 0; c < k; c++) P[t * k + c] = basis[c][t];
  return P;
}

function randomProbes(n: number, seed: number): number[] {
  const rand = mulberry32(seed);
  const out = [
    0,
    -0,
    448,
    -448,
    449,
    464,
    465,
    480,
    1e6,
    -1e6,
    Infinity,
    -Infinity,
    240,
    247.9,
    248,
    248.1,
    255,
    256,
    300,
    447,
    2 ** -6,
    2 ** -9,
    2 ** -10,
    1.5 * 2 ** -10,
    0.9 * 2 ** -9,
  ];
  for (let c = 0; c < 126; c++) {
    const a = refFp8Value(c);
    const b = refFp8Value(c + 1);
    out.push((a + b) / 2, f((a + b) / 2) * (1 + 2 ** -20), a);
  }
  for (let i = 0; i < n; i++) out.push((rand() < 0.5 ? -1 : 1) * Math.exp(rand() * 22 - 14));
  return out.map(f);
}

// ---------------------------------------------------------------- tests

describe('FP8 E4M3 cast as the kernels do it', () => {
  it('SM89+ path (__nv_cvt_float_to_fp8, SATFINITE) matches the reference RNE cast', () => {
    for (const x of randomProbes(4000, 1)) expect(fp8EncodeSm89(x), `x = ${x}`).toBe(refSm89(x));
    expect(fp8EncodeSm89(NaN)).toBe(0x7f);
  });

  it('pre-SM89 software path matches its described outcome, and differs from SM89+ where the design doc says it does not', () => {
    for (const x of randomProbes(4000, 2)) expect(fp8EncodeSm80(x), `x = ${x}`).toBe(refSm80(x));
    // the differences: exponent field 15 treated as overflow, (2^-10, 2^-9) flushed, −0 as +0
    expect(fp8Decode(fp8EncodeSm89(300))).toBe(288);
    expect(fp8Decode(fp8EncodeSm80(300))).toBe(448);
    expect(fp8Decode(fp8EncodeSm89(250))).toBe(256);
    expect(fp8Decode(fp8EncodeSm80(250))).toBe(448);
    expect(fp8Decode(fp8EncodeSm89(1.5 * 2 ** -10))).toBe(2 ** -9);
    expect(fp8Decode(fp8EncodeSm80(1.5 * 2 ** -10))).toBe(0);
    expect(fp8EncodeSm89(-0)).toBe(0x80);
    expect(fp8EncodeSm80(-0)).toBe(0x00);
    // the two agree everywhere else in the normal range below 248
    for (let x = 2 ** -9; x < 248; x *= 1.013) expect(fp8EncodeSm80(f(x))).toBe(fp8EncodeSm89(f(x)));
  });

  it('decodes every code as E4M3FN (both paths decode alike)', () => {
    for (let c = 0; c < 256; c++) {
      const want = refFp8Value(c);
      if (Number.isNaN(want)) expect(Number.isNaN(fp8Decode(c))).toBe(true);
      else expect(fp8Decode(c)).toBe(want);
    }
  });

  it('fp8_roundtrip (kvtc_roundtrip.rs): sin data in [-100, 100] within 15% relative error', () => {
    const batch = 4;
    const total = 32;
    const data = Float32Array.from({ length: batch * total }, (_, i) => f(Math.sin(f(f(i * 7.3) - 50)) * 100));
    const buf = quantizeRanges(data, [{ start_idx: 0, end_idx: total, quant_type: 'Fp8', int_bits: 0 }], batch, total);
    const back = dequantizeRanges(buf, [{ start_idx: 0, end_idx: total, quant_type: 'Fp8', int_bits: 0 }], batch, total);
    for (let i = 0; i < data.length; i++) {
      if (data[i] === 0) expect(back[i]).toBe(0);
      else expect(Math.abs((data[i] - back[i]) / data[i])).toBeLessThan(0.15);
    }
  });
});

describe('IntX as the kernels do it', () => {
  it('codes, packing (LSB first, rows byte-aligned), min/max metadata and reconstruction match the reference, bit for bit', () => {
    const rand = mulberry32(3);
    for (const bits of [1, 2, 4, 8]) {
      const batch = 5;
      const width = 8 * 3;
      const total = width + 7;
      const start = 5;
      const data = Float32Array.from({ length: batch * total }, () => f((rand() - 0.3) * 40));
      const ranges: KvtcTypeRange[] = [
        { start_idx: 0, end_idx: start, quant_type: 'Fp8', int_bits: 0 },
        { start_idx: start, end_idx: start + width, quant_type: 'IntX', int_bits: bits },
      ];
      const buf = quantizeRanges(data, ranges, batch, total);
      const back = dequantizeRanges(buf, ranges, batch, total);
      const dv = new DataView(buf.buffer);
      const meta = RANGE_HEADER_BYTES + batch * start + RANGE_HEADER_BYTES;
      const slots = 8 / bits;
      for (let r = 0; r < batch; r++) {
        const ref = refIntxRow(Array.from(data.subarray(r * total + start, r * total + start + width)), bits);
        expect(dv.getFloat32(meta + r * 4, true)).toBe(ref.min);
        expect(dv.getFloat32(meta + (batch + r) * 4, true)).toBe(ref.max);
        for (let c = 0; c < width; c++) {
          const byte = buf[meta + 8 * batch + r * (width / slots) + Math.floor(c / slots)];
          expect((byte >> ((c % slots) * bits)) & (2 ** bits - 1)).toBe(ref.codes[c]);
          expect(back[r * total + start + c]).toBe(ref.out[c]);
        }
      }
    }
  });

  it('packs [1, 2, 3, 0] at 2 bits as 0b00111001', () => {
    const data = Float32Array.of(1, 2, 3, 0); // min 0, max 3: codes equal the values
    const buf = quantizeRanges(data, [{ start_idx: 0, end_idx: 4, quant_type: 'IntX', int_bits: 2 }], 1, 4);
    expect(buf[RANGE_HEADER_BYTES + 8]).toBe(0b00111001);
  });

  it('minmax_reduce_correctness (kvtc_roundtrip.rs): their three rows', () => {
    const data = Float32Array.from([
      1,
      3,
      -5,
      7,
      10,
      2,
      -1,
      0,
      4,
      6,
      8,
      -3,
      9,
      -2,
      5,
      -4,
      0,
      200,
      -100,
      50,
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8,
      9,
      10,
      -50,
      100,
      ...Array(16).fill(42),
    ]);
    const { min, max } = minmaxReduce(data, 3, 16, 0, 16);
    expect([...min]).toEqual([-5, -100, 42]);
    expect([...max]).toEqual([10, 200, 42]);
  });

  it('intx_roundtrip_{8,4,2,1}bit (kvtc_roundtrip.rs): error within one quantization step; a constant row uses interval 1', () => {
    for (const bits of [8, 4, 2, 1]) {
      const batch = 4;
      const total = 32;
      const data = Float32Array.from({ length: batch * total }, (_, i) => f(f(i * 100) / (batch * total)));
      const ranges: KvtcTypeRange[] = [{ start_idx: 0, end_idx: total, quant_type: 'IntX', int_bits: bits }];
      const back = dequantizeRanges(quantizeRanges(data, ranges, batch, total), ranges, batch, total);
      for (let r = 0; r < batch; r++) {
        const row = data.subarray(r * total, (r + 1) * total);
        const step = (Math.max(...row) - Math.min(...row)) / (2 ** bits - 1);
        for (let c = 0; c < total; c++) expect(Math.abs(data[r * total + c] - back[r * total + c])).toBeLessThanOrEqual(step + 1e-5);
      }
    }
    const flat = Float32Array.from(Array(8).fill(42));
    const r: KvtcTypeRange[] = [{ start_idx: 0, end_idx: 8, quant_type: 'IntX', int_bits: 4 }];
    expect([...dequantizeRanges(quantizeRanges(flat, r, 1, 8), r, 1, 8)]).toEqual(Array(8).fill(42));
  });
});

describe('sizes and the self-describing buffer', () => {
  it('compressed_size_helper (kvtc_roundtrip.rs): 3·40 + 800 + (400 + 64) + (200 + 64) bytes for 8 rows', () => {
    const ranges: KvtcTypeRange[] = [
      { start_idx: 0, end_idx: 100, quant_type: 'Fp8', int_bits: 0 },
      { start_idx: 100, end_idx: 200, quant_type: 'IntX', int_bits: 4 },
      { start_idx: 200, end_idx: 300, quant_type: 'IntX', int_bits: 2 },
    ];
    expect(compressedSize(ranges, 8)).toBe(3 * 40 + 800 + 464 + 264);
    expect(rowBytes(ranges)).toBe(100 + (50 + 8) + (25 + 8));
    const data = new Float32Array(8 * 300).map((_, i) => Math.sin(i));
    const buf = quantizeRanges(data, ranges, 8, 300);
    expect(buf.byteLength).toBe(compressedSize(ranges, 8));
    // KvtcRangeHeader of the second range: i32 quant_type, i32 int_bits, u64 start, end, packed, metadata
    const dv = new DataView(buf.buffer);
    const o = 40 + 800;
    expect([dv.getInt32(o, true), dv.getInt32(o + 4, true)]).toEqual([1, 4]);
    expect([8, 16, 24, 32].map((k) => Number(dv.getBigUint64(o + k, true)))).toEqual([100, 200, 400, 64]);
  });

  it('refuses IntX widths the kernels would overrun (packed size ⌈n·w/slots⌉ vs rows of ⌈w/slots⌉ bytes)', () => {
    const bad: KvtcTypeRange[] = [{ start_idx: 0, end_idx: 3, quant_type: 'IntX', int_bits: 2 }];
    const c: KvtcConfigData = { mean: new Float32Array(4), projection: new Float32Array(12), features: 4, pca_components: 3, ranges: bad };
    expect(() => kvtcCompress(new Float32Array(16), c, 4)).toThrow(/multiple of 4/);
  });

  it('a truncated or foreign buffer is a typed error (the kernels would read it blindly)', () => {
    const ranges: KvtcTypeRange[] = [{ start_idx: 0, end_idx: 8, quant_type: 'IntX', int_bits: 4 }];
    const buf = quantizeRanges(
      new Float32Array(16).map((_, i) => i),
      ranges,
      2,
      8,
    );
    for (const [b, n] of [
      [buf.subarray(0, buf.length - 1), 2],
      [buf, 3],
      [buf, 1],
    ] as const) {
      try {
        dequantizeRanges(b, ranges, n, 8);
        expect.unreachable();
      } catch (e) {
        expect(isKvtcError(e) && e.code).toBe('BLOB_INVALID');
      }
    }
  });
});

describe('whole pipeline (kvtc_compress → kvtc_decompress)', () => {
  it('equals the straightforward reference bit for bit on a mixed FP8 / Int4 / Int2 config', () => {
    // full_pipeline_multi_range (kvtc_roundtrip.rs): 32 → 24 features, FP8 8 + Int4 8 + Int2 8, their data.
    const features = 32;
    const k = 24;
    const n = 6;
    const projection = gramSchmidtProjection(features, k, (i, j) => Math.sin((i * 97 + j * 53 + 7) * 1.234));
    const mean = Float32Array.from({ length: features }, (_, t) => Math.sin(t * 0.7) * 5);
    const rows = Float32Array.from({ length: n * features }, (_, idx) => {
      const x = idx;
      return Math.sin(x * 0.37) * 8 + Math.cos(x * 1.1) * 3 + mean[idx % features];
    });
    const config: KvtcConfigData = {
      mean,
      projection,
      features,
      pca_components: k,
      ranges: [
        { start_idx: 0, end_idx: 8, quant_type: 'Fp8', int_bits: 0 },
        { start_idx: 8, end_idx: 16, quant_type: 'IntX', int_bits: 4 },
        { start_idx: 16, end_idx: 24, quant_type: 'IntX', int_bits: 2 },
      ],
    };
    const buf = kvtcCompress(rows, config, n);
    expect(buf.byteLength).toBe(compressedSize(config.ranges, n));
    const got = kvtcDecompress(buf, config, n);
    expect([...got]).toEqual([...refPipeline(rows, config, n)]);
    // their bound: reconstruction within 5 of the projection-only reconstruction
    const noQuant = refPipeline(rows, { ...config, ranges: [{ start_idx: 0, end_idx: k, quant_type: 'IntX', int_bits: 8 }] }, n);
    for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - noQuant[i])).toBeLessThan(5);
  });

  it('identity_projection_roundtrip and orthogonal_projection_roundtrip (kvtc_roundtrip.rs) bounds hold', () => {
    const features = 16;
    const eye = new Float32Array(features * features);
    for (let i = 0; i < features; i++) eye[i * features + i] = 1;
    const rows = Float32Array.from({ length: 4 * features }, (_, i) => Math.sin(i * 1.7) * 5);
    const id: KvtcConfigData = {
      mean: new Float32Array(features),
      projection: eye,
      features,
      pca_components: features,
      ranges: [{ start_idx: 0, end_idx: features, quant_type: 'Fp8', int_bits: 0 }],
    };
    const back = kvtcDecompress(kvtcCompress(rows, id, 4), id, 4);
    for (let i = 0; i < rows.length; i++) {
      if (rows[i] === 0) expect(Math.abs(back[i])).toBeLessThan(0.5);
      else expect(Math.abs((rows[i] - back[i]) / rows[i])).toBeLessThan(0.15);
    }

    const P = gramSchmidtProjection(features, 8, (i, j) => Math.sin((i * 137 + j * 31 + 17) * 0.618));
    const mean = Float32Array.from({ length: features }, (_, t) => Math.cos(t * 0.3) * 2);
    const x = Float32Array.from({ length: 4 * features }, (_, i) => Math.sin(i * 0.97) * 3 + mean[i % features]);
    const orth: KvtcConfigData = {
      mean,
      projection: P,
      features,
      pca_components: 8,
      ranges: [{ start_idx: 0, end_idx: 8, quant_type: 'IntX', int_bits: 8 }],
    };
    const got = kvtcDecompress(kvtcCompress(x, orth, 4), orth, 4);
    const ideal = refPipeline(x, { ...orth, ranges: [{ start_idx: 0, end_idx: 8, quant_type: 'Fp8', int_bits: 0 }] }, 4);
    for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - ideal[i])).toBeLessThan(1);
  });

  it('no blocks: kvtc_compress returns nothing', () => {
    const c: KvtcConfigData = {
      mean: new Float32Array(8),
      projection: new Float32Array(64).map((_, i) => (i % 9 === 0 ? 1 : 0)),
      features: 8,
      pca_components: 8,
      ranges: [{ start_idx: 0, end_idx: 8, quant_type: 'Fp8', int_bits: 0 }],
    };
    expect(kvtcCompress(new Float32Array(0), c, 0).byteLength).toBe(0);
  });

  it('casts the output like static_cast<__half> / <__nv_bfloat16> (round to nearest even)', () => {
    expect(castToDtype(1 + 2 ** -11, 'f16')).toBe(1); // tie → even
    expect(castToDtype(1 + 3 * 2 ** -11, 'f16')).toBe(1 + 2 ** -9);
    expect(castToDtype(1 + 2 ** -8, 'bf16')).toBe(1); // tie → even
    expect(castToDtype(1 + 3 * 2 ** -8, 'bf16')).toBe(1 + 2 ** -6);
    expect(castToDtype(0.1, 'f32')).toBe(f(0.1));
  });
});

/**
 * KVTC encode/decode of a whole cache with a profile. The matrix work — and the quantization of
 * static int groups, which is affine — runs as ONNX graphs (graphs.ts) on the chosen execution
 * provider; bit-packing, the dynamic and fp8 groups and DEFLATE run on the host (payload.ts,
 * blob.ts).
 *
 *   encode: check the values (finite; compressed tokens within the profile's range, OUTLIER_FACTOR);
 *           tokens [0, sink) and [T−window, T) → raw section (fp16; float32 when a float32
 *           cache holds a raw value fp16 cannot);
 *           tokens [sink, T−window) → per plan: gather [G, n, hd] → graph → codes [kA, n] and
 *           coeffs [kB, n] (stored components, component-major) → pack (+ quantize the kB) →
 *           DEFLATE → plan section.
 *   decode: parseBlob bounds the untrusted blob before anything is allocated, then the reverse;
 *           the decode graph writes [G, n, hd], so values are block copies into the cache and
 *           keys one RoPE pass.
 */
import { invariant, KvtcError } from '../errors.js';
import { floatToHalf, halfToFloat } from '../io/fp16.js';
import { ropeInvFreq } from '../model/rope-freqs.js';
import type { KvCache, RopeSpec } from '../model/types.js';
import type { Device } from '../onnx/session.js';
import { assembleBlob, compressSection, MAX_POSITIONS, MAX_TOKENS, parseBlob, type BlobLayout, type EncodedSection, type EntropyCoder } from './blob.js';
import { buildDecodeGraph, buildEncodeGraph, ropePairs, ropeTables } from './graphs.js';
import { InlineTransform, ThreadedTransform, type Feeds, type Outputs, type TransformRunner } from './transform.js';
import { decodePlanCodes, encodePlanCodes, payloadLength } from './payload.js';
import type { BasisPlan } from './types.js';

export interface CodecSpec {
  layers: number;
  kvHeads: number;
  headDim: number;
  rope: RopeSpec;
  profileId: string;
  sink: number;
  window: number;
  entropy: EntropyCoder;
}

export interface EncodeStats {
  tokens: number;
  compressedTokens: number;
  /** fp16 bytes of the whole cache / of the compressed tokens only. */
  fp16Bytes: number;
  fp16BytesCompressed: number;
  blobBytes: number;
  /** Blob bytes attributable to the compressed tokens: everything except the raw section payload. */
  compressedBytes: number;
  ratioBlob: number;
  ratioCompressed: number;
  /**
   * Wall time on the calling thread; with transformThread, transform is the time spent waiting for
   * the worker. transform = the ONNX graphs, which also quantize the static int groups;
   * quantize = host bit-packing and the dynamic and fp8 groups.
   */
  seconds: { gather: number; transform: number; quantize: number; entropy: number; total: number };
}

export interface DecodeStats {
  tokens: number;
  /** As EncodeStats: transform = the graphs (static dequantization is folded into them); dequantize = host unpacking and the dynamic and fp8 groups. */
  seconds: { inflate: number; dequantize: number; transform: number; scatter: number; total: number };
}

const now = () => performance.now() / 1000;
const NO_CODES = new Uint8Array(0);
const NO_COEFFS = new Float32Array(0);

/**
 * Host RoPE for the CPU path, in float32 exactly as the graphs' Mul/Add/Sub nodes compute it
 * (each product rounded to float32, then the float32 sum), so both paths give the same bits.
 * cos/sin: Float32Array // [n, half] from ropeTables. a/b: within-head pair indices.
 */
export interface HostRope {
  cos: Float32Array;
  sin: Float32Array;
  half: number;
  a: Int32Array;
  b: Int32Array;
  rest: Int32Array;
}

function hostRope(rope: RopeSpec, headDim: number, tables: { cos: Float32Array; sin: Float32Array }): HostRope {
  const idx = ropePairs(rope, headDim);
  return { cos: tables.cos, sin: tables.sin, half: idx.a.length, a: Int32Array.from(idx.a), b: Int32Array.from(idx.b), rest: Int32Array.from(idx.rest) };
}

const f = Math.fround;

/**
 * Rotates n rows of headDim from src[s..] into dst[d..] (may not alias): apply RoPE, or undo it
 * (rotation by −θ), with row t using cos/sin row t. Pairs (a, b): a' = a·c ∓ b·s, b' = b·c ± a·s.
 */
function rotateRows(src: Float32Array, s: number, dst: Float32Array, d: number, n: number, headDim: number, rope: HostRope, undo: boolean, norms?: Float64Array): void {
  const { cos, sin, half, a: ia, b: ib, rest } = rope;
  const halfLayout = rest.length === 0 && ib[0] === half; // rotate_half over the whole head: no index arrays
  for (let t = 0, row = 0; t < n; t++, s += headDim, d += headDim, row += half) {
    if (halfLayout && undo) {
      let q = 0;
      for (let i = 0; i < half; i++) {
        const va = src[s + i];
        const vb = src[s + i + half];
        const c = cos[row + i];
        const sn = sin[row + i];
        dst[d + i] = f(va * c) + f(vb * sn);
        dst[d + i + half] = f(vb * c) - f(va * sn);
        q += va * va + vb * vb;
      }
      if (norms) norms[t] += q;
    } else if (halfLayout) {
      for (let i = 0; i < half; i++) {
        const va = src[s + i];
        const vb = src[s + i + half];
        const c = cos[row + i];
        const sn = sin[row + i];
        dst[d + i] = f(va * c) - f(vb * sn);
        dst[d + i + half] = f(vb * c) + f(va * sn);
      }
    } else {
      let q = 0;
      for (let i = 0; i < half; i++) {
        const va = src[s + ia[i]];
        const vb = src[s + ib[i]];
        const c = cos[row + i];
        const sn = undo ? -sin[row + i] : sin[row + i];
        dst[d + ia[i]] = f(va * c) - f(vb * sn);
        dst[d + ib[i]] = f(vb * c) + f(va * sn);
        q += va * va + vb * vb;
      }
      for (let i = 0; i < rest.length; i++) {
        const v = src[s + rest[i]];
        dst[d + rest[i]] = v;
        q += v * v;
      }
      if (norms) norms[t] += q;
    }
  }
}

/**
 * Copies tokens [t0, t0+n) of the plan's layers into X [G, n, headDim] (G = layers × KV heads,
 * the cache's own per-head layout, so each head is one contiguous run), un-rotating keys when
 * `rope` is given (token k at table row k). The hot-path twin of features.ts's gatherFeatures:
 * float32 arithmetic from the precomputed cos/sin tables, exactly as the ONNX graph computes
 * it, where features.ts is the float64 reference.
 */
function gatherHeads(src: Float32Array[], layers: number[], kvHeads: number, headDim: number, tokens: number, t0: number, n: number, x: Float32Array, rope: HostRope | undefined, norms: Float64Array): void {
  const run = n * headDim;
  norms.fill(0, 0, n);
  for (let li = 0; li < layers.length; li++) {
    const a = src[layers[li]];
    for (let h = 0; h < kvHeads; h++) {
      const s = (h * tokens + t0) * headDim;
      const d = (li * kvHeads + h) * run;
      if (rope) rotateRows(a, s, x, d, n, headDim, rope, true, norms);
      else {
        x.set(a.subarray(s, s + run), d);
        addSquares(a, s, n, headDim, norms);
      }
    }
  }
}

/**
 * norms[t] += Σ_d a[s + t·headDim + d]² (float64) for n rows of headDim: the range check's sums,
 * read right after the rows were copied (so from cache). A non-finite value makes its token's sum
 * non-finite (a float32's square cannot overflow float64), so the check also finds NaN and ∞.
 * (rotateRows adds the same squares, in its own order, while it un-rotates keys.)
 */
function addSquares(a: Float32Array, s: number, n: number, headDim: number, norms: Float64Array): void {
  if (headDim % 4 === 0) {
    for (let t = 0, i = s; t < n; t++) {
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (const e = i + headDim; i < e; i += 4) {
        const x0 = a[i];
        const x1 = a[i + 1];
        const x2 = a[i + 2];
        const x3 = a[i + 3];
        s0 += x0 * x0;
        s1 += x1 * x1;
        s2 += x2 * x2;
        s3 += x3 * x3;
      }
      norms[t] += s0 + s1 + (s2 + s3);
    }
    return;
  }
  for (let t = 0, i = s; t < n; t++) {
    let s0 = 0;
    for (const e = i + headDim; i < e; i++) s0 += a[i] * a[i];
    norms[t] += s0;
  }
}

/** Inverse of gatherHeads: writes X [G, n, headDim] into the cache, re-rotating keys when `rope` is given. */
function scatterHeads(x: Float32Array, dst: Float32Array[], layers: number[], kvHeads: number, headDim: number, tokens: number, t0: number, n: number, rope?: HostRope): void {
  const run = n * headDim;
  for (let li = 0; li < layers.length; li++) {
    const a = dst[layers[li]];
    for (let h = 0; h < kvHeads; h++) {
      const s = (li * kvHeads + h) * run;
      const d = (h * tokens + t0) * headDim;
      if (rope) rotateRows(x, s, a, d, n, headDim, rope, false);
      else a.set(x.subarray(s, s + run), d);
    }
  }
}

/**
 * Raw-token section: for each layer, keys then values, [kvHeads, sink] then [kvHeads, window] rows
 * of headDim, as fp16: the ratio is defined against fp16 (docs/profile-format.md §6). A float32
 * cache with a raw value fp16 cannot hold (|x| ≥ 65520 rounds to ∞) is stored as float32 instead
 * (header flag bit 1), losslessly; a float16 cache never holds one (KV_OUT_OF_RANGE: its values
 * are not what its dtype says). A non-finite value → KV_INVALID.
 */
function rawSection(cache: KvCache, sink: number, window: number, source: string): { data: Uint8Array; float32: boolean } {
  const { layers, kvHeads, headDim, tokens } = cache;
  const rows = layers * 2 * kvHeads * (sink + window);
  const vals = new Float32Array(rows * headDim);
  let at = 0;
  for (let l = 0; l < layers; l++) {
    for (const arr of [cache.keys[l], cache.values[l]]) {
      for (let h = 0; h < kvHeads; h++) {
        const base = h * tokens * headDim;
        vals.set(arr.subarray(base, base + sink * headDim), at);
        at += sink * headDim;
        vals.set(arr.subarray(base + (tokens - window) * headDim, base + tokens * headDim), at);
        at += window * headDim;
      }
    }
  }
  const h = new Uint16Array(vals.length);
  let overflow = -1;
  for (let i = 0; i < vals.length; i++) {
    const x = floatToHalf(vals[i]);
    h[i] = x;
    if ((x & 0x7c00) === 0x7c00 && overflow < 0) overflow = i;
  }
  if (overflow < 0) return { data: new Uint8Array(h.buffer), float32: false };
  // fp16 ∞ or NaN: a non-finite input, or a finite one beyond fp16.
  for (let i = overflow; i < vals.length; i++) if (!Number.isFinite(vals[i])) throw nonFinite(source, cache, rawSite(cache, sink, window, i), vals[i]);
  if (cache.dtype === 'float32') return { data: new Uint8Array(vals.buffer), float32: true };
  const { layer, kind, head, token } = rawSite(cache, sink, window, overflow);
  throw new KvtcError('KV_OUT_OF_RANGE', `${source}: the ${kind} of layer ${layer}, head ${head}, token ${token} (position ${cache.startPosition + token}), dim ${overflow % headDim} is ${vals[overflow]}, beyond fp16's ±65504, but the cache says its dtype is float16`, {
    fix: 'A float16 cache cannot hold this value: pass the cache as float32 (kvtc then stores its raw tokens as float32), or check how the cache was produced.',
    context: { source, layer, kind, head, token, position: cache.startPosition + token, dim: overflow % headDim, value: vals[overflow], dtype: cache.dtype },
  });
}

/** Where value i of a raw section sits: layer, key/value, head, cache token, dim. */
function rawSite(cache: KvCache, sink: number, window: number, i: number): { layer: number; kind: 'key' | 'value'; head: number; token: number; dim: number } {
  const { kvHeads, headDim, tokens } = cache;
  const row = Math.floor(i / headDim);
  const r = row % (sink + window);
  const head = Math.floor(row / (sink + window)) % kvHeads;
  const kv = Math.floor(row / ((sink + window) * kvHeads));
  return { layer: Math.floor(kv / 2), kind: kv % 2 === 0 ? 'key' : 'value', head, token: r < sink ? r : tokens - window + (r - sink), dim: i % headDim };
}

function nonFinite(source: string, cache: KvCache, at: { layer: number; kind: 'key' | 'value'; head: number; token: number; dim: number }, value: number): KvtcError {
  const { layer, kind, head, token, dim } = at;
  return new KvtcError('KV_INVALID', `${source}: the ${kind} of layer ${layer}, head ${head}, token ${token} (position ${cache.startPosition + token}), dim ${dim} is ${value}; a KV cache holds finite values`, {
    fix: "Check how the cache was produced (a NaN or ∞ in the model's KV output usually means an overflow in the model run).",
    context: { source, kind, layer, head, token, position: cache.startPosition + token, dim, value: String(value) },
  });
}

/** Inverse of rawSection. Every value must be finite: an fp16 ∞/NaN (or a float32 one) means a corrupt blob. */
function restoreRaw(data: Uint8Array, cache: KvCache, sink: number, window: number, float32: boolean, source: string): void {
  const { layers, kvHeads, headDim, tokens } = cache;
  const count = layers * 2 * kvHeads * (sink + window) * headDim;
  const copy = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
  let vals: Float32Array;
  let bad = -1;
  if (float32) {
    vals = new Float32Array(copy);
    for (let i = 0; i < count; i++) {
      if (!Number.isFinite(vals[i])) {
        bad = i;
        break;
      }
    }
  } else {
    vals = new Float32Array(count);
    const h = new Uint16Array(copy);
    for (let i = 0; i < count; i++) {
      const x = h[i];
      if ((x & 0x7c00) === 0x7c00) {
        bad = i;
        break;
      }
      vals[i] = halfToFloat(x);
    }
  }
  if (bad >= 0) {
    const { layer, kind, head, token } = rawSite(cache, sink, window, bad);
    throw new KvtcError('BLOB_INVALID', `${source}: the raw section stores a non-finite ${kind} for layer ${layer}, head ${head}, token ${token}, dim ${bad % headDim}; no encoder writes one`, {
      fix: 'The blob is corrupt or was not written by kvtc: re-encode the cache with `kvtc encode`.',
      context: { blob: source, layer, kind, head, token, dim: bad % headDim },
    });
  }
  let at = 0;
  for (let l = 0; l < layers; l++) {
    for (const arr of [cache.keys[l], cache.values[l]]) {
      for (let h = 0; h < kvHeads; h++) {
        const base = h * tokens * headDim;
        arr.set(vals.subarray(at, at + sink * headDim), base);
        at += sink * headDim;
        arr.set(vals.subarray(at, at + window * headDim), base + (tokens - window) * headDim);
        at += window * headDim;
      }
    }
  }
}

/**
 * How far a compressed token may stray from what the profile was calibrated on: a token whose
 * feature vector x (one plan's layers and heads) has ‖x‖₂ > ‖μ‖₂ + OUTLIER_FACTOR · √(Σ variances)
 * is refused (KV_OUT_OF_RANGE). ‖x − μ‖ ≥ ‖x‖ − ‖μ‖, and RoPE preserves ‖x‖, so the test reads the
 * cache as stored, the same on every device, and refuses only tokens whose deviation from the
 * mean is more than 16× the calibration RMS deviation. Measured on stories260K (held-out prose,
 * source code, JSON, random characters): (‖x‖ − ‖μ‖)/RMS ≤ 3 for every token. Within the bound,
 * static groups clip to their calibrated range, as the spec says.
 */
export const OUTLIER_FACTOR = 16;

/** fp16's largest finite value. */
const HALF_MAX = 65504;

/** Clamps tokens [t0, t0 + n) of one [kvHeads, tokens, headDim] tensor to ±65504. */
function saturateHalf(a: Float32Array, kvHeads: number, tokens: number, headDim: number, t0: number, n: number): void {
  for (let h = 0; h < kvHeads; h++) {
    for (let i = (h * tokens + t0) * headDim, e = i + n * headDim; i < e; i++) {
      const v = a[i];
      if (v > HALF_MAX) a[i] = HALF_MAX;
      else if (v < -HALF_MAX) a[i] = -HALF_MAX;
    }
  }
}

export interface CodecOptions {
  device?: Device;
  /** Intra-op threads per ONNX Runtime session (default 1: dozens of small sessions with
   * spinning thread pools fight over the cores; measured 2.6x slower transform on 2 cores). */
  threads?: number;
  /** Run the graphs on a worker thread, overlapping them with the host stages (uses a second
   * core; worth it for large caches, costs a worker start-up per codec). */
  transformThread?: boolean;
}

export class KvtcCodec {
  private constructor(
    readonly spec: CodecSpec,
    readonly plans: BasisPlan[],
    private readonly transform: TransformRunner,
    private readonly invFreq: Float64Array,
    /** CPU: RoPE runs on the host, fused into gather/scatter (ORT's Gather/Concat chain cost 10x the matmul). */
    private readonly ropeOnHost: boolean,
    readonly threaded: boolean,
  ) {
    this.normBound = plans.map((p) => {
      let v = 0;
      for (let j = 0; j < p.variances.length; j++) v += p.variances[j];
      let m = 0;
      for (let j = 0; j < p.mean.length; j++) m += p.mean[j] * p.mean[j];
      // A rank-0 plan keeps nothing (x̂ = μ by design); zero calibrated variance gives no scale.
      return p.rank > 0 && v > 0 ? Math.sqrt(m) + OUTLIER_FACTOR * Math.sqrt(v) : Infinity;
    });
    this.layout = {
      profileId: spec.profileId,
      layers: spec.layers,
      kvHeads: spec.kvHeads,
      headDim: spec.headDim,
      sink: spec.sink,
      window: spec.window,
      planBytes: plans.map((p) => (p.rank > 0 ? (n: number) => payloadLength(p, n) : null)),
    };
  }

  /** Threaded: graph runs queued on the worker beyond the one this thread waits for next. */
  private static readonly IN_FLIGHT = 2;

  /** Reused gather buffer (inline encode), grown to the largest n·p seen. */
  private gatherScratch = new Float32Array(0);
  /** Reused codes buffer (inline decode), grown to the largest n·rank seen. */
  private codesScratch = new Uint8Array(0);
  /** Reused per-token squared norms (encode's range check), grown to the largest n seen. */
  private normScratch = new Float64Array(0);
  /** Per plan: the largest ‖x‖ of a compressed token (OUTLIER_FACTOR); Infinity where unchecked. */
  private readonly normBound: number[];
  /** What a blob of this profile must look like (parseBlob). */
  private readonly layout: BlobLayout;


  static async create(spec: CodecSpec, plans: BasisPlan[], opts: CodecOptions = {}): Promise<KvtcCodec> {
    const ctx = { rope: spec.rope, headDim: spec.headDim };
    // On the CPU the key graphs are built without their RoPE nodes (the host does it, same bits);
    // on CUDA the graphs keep RoPE so that all of the matrix work stays on the device.
    const ropeOnHost = (opts.device ?? 'cpu') === 'cpu';
    const graphPlan = (p: BasisPlan): BasisPlan => (ropeOnHost && p.kind === 'key' ? { ...p, kind: 'value' } : p);
    const graphs = {
      encode: plans.map((p) => (p.rank > 0 ? buildEncodeGraph(graphPlan(p), ctx) : null)),
      decode: plans.map((p) => (p.rank > 0 ? buildDecodeGraph(graphPlan(p), ctx) : null)),
    };
    const so = { device: opts.device, threads: opts.threads ?? 1 };
    const transform = opts.transformThread ? await ThreadedTransform.create(graphs, so) : await InlineTransform.create(graphs, so);
    return new KvtcCodec(spec, plans, transform, ropeInvFreq(spec.rope), ropeOnHost, opts.transformThread === true);
  }

  /** Raw tokens at each end: all of them when the cache is shorter than sink + window. */
  split(tokens: number): { sink: number; window: number; n: number } {
    const sink = Math.min(this.spec.sink, tokens);
    const window = Math.min(this.spec.window, tokens - sink);
    return { sink, window, n: tokens - sink - window };
  }

  checkCache(cache: KvCache, source = 'the KV cache'): void {
    const s = this.spec;
    if (cache.layers !== s.layers || cache.kvHeads !== s.kvHeads || cache.headDim !== s.headDim) {
      throw new KvtcError('PROFILE_MISMATCH', `${source} has ${cache.layers} layers × ${cache.kvHeads} KV heads × ${cache.headDim} head dim, but the profile is for ${s.layers} × ${s.kvHeads} × ${s.headDim}`, {
        fix: 'Use the profile calibrated for the model that produced this cache (`kvtc inspect` shows which model a profile is for).',
      });
    }
  }

  /**
   * Range check of plan i's compressed tokens after gatherHeads summed their squares (`norms`):
   * a non-finite value → KV_INVALID; ‖x‖ beyond the plan's bound (OUTLIER_FACTOR) →
   * KV_OUT_OF_RANGE. docs/profile-format.md §6, "Values and range".
   */
  private checkPlanTokens(i: number, norms: Float64Array, cache: KvCache, sink: number, n: number, source: string): void {
    const bound = this.normBound[i];
    const b2 = bound * bound;
    for (let k = 0; k < n; k++) {
      if (norms[k] <= b2) continue; // false for NaN, so non-finite sums fall through
      const plan = this.plans[i];
      const t = sink + k;
      if (!Number.isFinite(norms[k])) {
        const at = this.locate(cache, plan.kind, plan.layers, t, (v) => !Number.isFinite(v));
        throw nonFinite(source, cache, { ...at, kind: plan.kind, token: t }, at.value);
      }
      const norm = Math.sqrt(norms[k]);
      const at = this.locate(cache, plan.kind, plan.layers, t);
      const layers = plan.layers;
      throw new KvtcError('KV_OUT_OF_RANGE', `${source}: token ${t} (position ${cache.startPosition + t}) is far outside the range the profile was calibrated on: the norm of its ${plan.kind}s in layer${layers.length > 1 ? 's' : ''} ${layers.join(', ')} (plan ${i}) is ${norm.toPrecision(4)}, above the profile's bound ${bound.toPrecision(4)} (‖mean‖ + ${OUTLIER_FACTOR}× the calibration RMS deviation); its largest value is ${at.value} (layer ${at.layer}, head ${at.head}, dim ${at.dim}). Encoding it would clip it to garbage`, {
        fix: 'Recalibrate the profile on data representative of this cache (`kvtc calibrate --data ...`), or check the cache: values this far from the calibration data usually mean an overflow or the wrong model.',
        context: { source, plan: i, kind: plan.kind, layers, token: t, position: cache.startPosition + t, norm, bound, layer: at.layer, head: at.head, dim: at.dim, value: at.value },
      });
    }
  }

  /**
   * Finite check of the compressed tokens no gather reads: layers of rank-0 plans (and any
   * (layer, kind) no plan covers). Raw tokens are checked as rawSection converts them.
   */
  private checkUngathered(cache: KvCache, sink: number, n: number, source: string): void {
    const gathered = new Set<string>();
    for (const p of this.plans) if (p.rank > 0) for (const l of p.layers) gathered.add(`${p.kind}${l}`);
    const { layers, kvHeads, headDim, tokens } = cache;
    for (let l = 0; l < layers; l++) {
      for (const kind of ['key', 'value'] as const) {
        if (gathered.has(`${kind}${l}`)) continue;
        const a = (kind === 'key' ? cache.keys : cache.values)[l];
        for (let h = 0; h < kvHeads; h++) {
          for (let i = (h * tokens + sink) * headDim, e = i + n * headDim; i < e; i++) {
            if (!Number.isFinite(a[i])) throw nonFinite(source, cache, { layer: l, kind, head: h, token: Math.floor(i / headDim) % tokens, dim: i % headDim }, a[i]);
          }
        }
      }
    }
  }

  /** The value of token t in the given layers of one kind that `pick` selects (default: the largest magnitude). */
  private locate(cache: KvCache, kind: 'key' | 'value', layers: number[], t: number, pick?: (v: number) => boolean): { layer: number; head: number; dim: number; value: number } {
    const { kvHeads, headDim, tokens: T } = cache;
    let best = { layer: layers[0], head: 0, dim: 0, value: 0 };
    for (const l of layers) {
      const a = (kind === 'key' ? cache.keys : cache.values)[l];
      for (let h = 0; h < kvHeads; h++) {
        for (let d = 0; d < headDim; d++) {
          const v = a[(h * T + t) * headDim + d];
          if (pick ? pick(v) : Math.abs(v) > Math.abs(best.value)) {
            best = { layer: l, head: h, dim: d, value: v };
            if (pick) return best;
          }
        }
      }
    }
    return best;
  }

  async encode(cache: KvCache, source = 'the KV cache'): Promise<{ blob: Uint8Array; stats: EncodeStats }> {
    this.checkCache(cache, source);
    const t0 = now();
    if (!(cache.tokens >= 0 && cache.tokens <= MAX_TOKENS && Number.isInteger(cache.tokens))) {
      throw new KvtcError('KV_INVALID', `${source} has ${cache.tokens} tokens; a kvtc blob holds at most ${MAX_TOKENS} (2^24)`, {
        fix: `Split the cache into pieces of at most ${MAX_TOKENS} tokens (each with its own start position).`,
        context: { source, tokens: cache.tokens, max_tokens: MAX_TOKENS },
      });
    }
    if (!(Number.isInteger(cache.startPosition) && cache.startPosition >= 0 && cache.startPosition + cache.tokens <= MAX_POSITIONS)) {
      throw new KvtcError('KV_INVALID', `${source} starts at position ${cache.startPosition} with ${cache.tokens} tokens; positions must be integers in [0, 2^32)`, {
        fix: 'Give the cache its real start position (the absolute position of its first token).',
        context: { source, start_position: cache.startPosition, tokens: cache.tokens },
      });
    }
    const { sink, window, n } = this.split(cache.tokens);
    this.checkUngathered(cache, sink, n, source);
    const fp16 = cache.dtype === 'float16';
    const raw = rawSection(cache, sink, window, source);
    const sections: EncodedSection[] = [compressSection('raw', 0, raw.data, 'stored')];
    const sec = { gather: 0, transform: 0, quantize: 0, entropy: 0, total: 0 };
    if (n > 0) {
      const tables = ropeTables(this.invFreq, cache.startPosition + sink, n);
      const host = this.ropeOnHost ? hostRope(this.spec.rope, cache.headDim, tables) : undefined;
      // Gather a basis and submit its projection; threaded, up to IN_FLIGHT projections run on the
      // worker while this thread quantizes and deflates the oldest result and gathers the next
      // basis (into a buffer the worker handed back). Inline, each result is used at once.
      const inFlight = this.threaded ? KvtcCodec.IN_FLIGHT : 0;
      const pending: { i: number; out: Promise<Outputs> }[] = [];
      const finish = async () => {
        const { i, out: o } = pending.shift()!;
        let t = now();
        const out = await o;
        sec.transform += now() - t;
        t = now();
        const payload = encodePlanCodes({ codes: (out.codes as Uint8Array) ?? NO_CODES, coeffs: (out.coeffs as Float32Array) ?? NO_COEFFS }, n, this.plans[i], { plan: i, firstToken: sink, source });
        sec.quantize += now() - t;
        t = now();
        sections.push(compressSection('plan', i, payload, this.spec.entropy));
        sec.entropy += now() - t;
      };
      if (this.normScratch.length < n) this.normScratch = new Float64Array(n);
      const norms = this.normScratch;
      try {
        for (let i = 0; i < this.plans.length; i++) {
          const plan = this.plans[i];
          if (plan.rank === 0) continue;
          while (pending.length > inFlight) await finish();
          const t = now();
          const src = plan.kind === 'key' ? cache.keys : cache.values;
          let x: Float32Array;
          if (this.threaded) x = this.transform.take?.(n * plan.dim) ?? new Float32Array(n * plan.dim);
          else {
            if (this.gatherScratch.length < n * plan.dim) this.gatherScratch = new Float32Array(n * plan.dim);
            x = this.gatherScratch.subarray(0, n * plan.dim);
          }
          gatherHeads(src, plan.layers, cache.kvHeads, cache.headDim, cache.tokens, sink, n, x, plan.kind === 'key' ? host : undefined, norms);
          sec.gather += now() - t;
          this.checkPlanTokens(i, norms, cache, sink, n, source);
          const feeds: Feeds = { x: { data: x, dims: [plan.dim / cache.headDim, n, cache.headDim] } };
          if (plan.kind === 'key' && !host) {
            feeds.cos = { data: tables.cos, dims: [n, tables.cos.length / n] };
            feeds.sin = { data: tables.sin, dims: [n, tables.sin.length / n] };
          }
          pending.push({ i, out: this.transform.run('encode', i, feeds) });
        }
        while (pending.length) await finish();
      } catch (e) {
        // A range error mid-way: let the graph runs already submitted finish before reporting it.
        await Promise.allSettled(pending.map((p) => p.out));
        throw e;
      }
    }
    const blob = assembleBlob(
      { fp16, rawFloat32: raw.float32, profileId: this.spec.profileId, tokens: cache.tokens, startPosition: cache.startPosition, layers: cache.layers, kvHeads: cache.kvHeads, headDim: cache.headDim, sink, window },
      sections,
    );
    sec.total = now() - t0;
    const perToken = cache.layers * 2 * cache.kvHeads * cache.headDim * 2;
    const compressedBytes = blob.byteLength - sections[0].stored.byteLength;
    return {
      blob,
      stats: {
        tokens: cache.tokens,
        compressedTokens: n,
        fp16Bytes: perToken * cache.tokens,
        fp16BytesCompressed: perToken * n,
        blobBytes: blob.byteLength,
        compressedBytes,
        ratioBlob: (perToken * cache.tokens) / blob.byteLength,
        ratioCompressed: n > 0 ? (perToken * n) / compressedBytes : Number.NaN,
        seconds: sec,
      },
    };
  }

  /**
   * Decodes a blob of this profile. The blob is untrusted: parseBlob checks every header and table
   * field against the file and the profile before anything is allocated, and the values decoded
   * are finite (a non-finite raw value, fp16 scale or offset, or a NaN fp8 code is BLOB_INVALID).
   */
  async decode(blob: Uint8Array, source = '<blob>'): Promise<{ cache: KvCache; stats: DecodeStats }> {
    const t0 = now();
    const { header, raw, plans: payloads } = parseBlob(blob, this.layout, source);
    const sec = { inflate: now() - t0, dequantize: 0, transform: 0, scatter: 0, total: 0 };
    const { layers, kvHeads, headDim, tokens, sink, window } = header;
    const n = tokens - sink - window;
    const size = kvHeads * tokens * headDim;
    const cache: KvCache = {
      layers, kvHeads, headDim, tokens, dtype: header.fp16 ? 'float16' : 'float32', startPosition: header.startPosition,
      keys: Array.from({ length: layers }, () => new Float32Array(size)),
      values: Array.from({ length: layers }, () => new Float32Array(size)),
    };
    restoreRaw(raw, cache, sink, window, header.rawFloat32, source);
    if (n > 0) {
      const tables = ropeTables(this.invFreq, header.startPosition + sink, n);
      const rot = hostRope(this.spec.rope, headDim, tables);
      const host = this.ropeOnHost ? rot : undefined;
      const scatter = (plan: BasisPlan, x: Float32Array, r: HostRope | undefined) => {
        const t = now();
        scatterHeads(x, plan.kind === 'key' ? cache.keys : cache.values, plan.layers, kvHeads, headDim, tokens, sink, n, r);
        sec.scatter += now() - t;
      };
      // Phase 1 dequantizes every basis and submits its reconstruction; phase 2 scatters each as
      // it arrives. Threaded, the reconstructions run while dequantization continues.
      const pending: { plan: BasisPlan; x: Promise<Outputs> }[] = [];
      for (let i = 0; i < this.plans.length; i++) {
        const plan = this.plans[i];
        if (plan.rank === 0) {
          // Every component dropped: the reconstruction is the mean (keys re-rotated per token).
          const x = new Float32Array(n * plan.dim);
          for (let g = 0; g < plan.dim / headDim; g++) {
            const m = plan.mean.subarray(g * headDim, (g + 1) * headDim);
            for (let k = 0; k < n; k++) x.set(m, (g * n + k) * headDim);
          }
          scatter(plan, x, plan.kind === 'key' ? rot : undefined);
          continue;
        }
        let t = now();
        const payload = payloads.get(i);
        invariant(payload, `parseBlob returned no section for plan ${i}`);
        // Inline, the graph has run before the next plan is decoded: reuse one codes buffer.
        if (!this.threaded && this.codesScratch.length < n * plan.rank) this.codesScratch = new Uint8Array(n * plan.rank);
        const pc = decodePlanCodes(payload, n, plan, source, this.threaded ? undefined : this.codesScratch, { plan: i, firstToken: sink, source });
        sec.dequantize += now() - t;
        t = now();
        const feeds: Feeds = {};
        if (pc.codes.length) feeds.codes = { data: pc.codes, dims: [pc.codes.length / n, n] };
        if (pc.coeffs.length) feeds.coeffs = { data: pc.coeffs, dims: [pc.coeffs.length / n, n] };
        if (plan.kind === 'key' && !host) {
          feeds.cos = { data: tables.cos, dims: [n, tables.cos.length / n] };
          feeds.sin = { data: tables.sin, dims: [n, tables.sin.length / n] };
        }
        const run = this.transform.run('decode', i, feeds);
        if (this.threaded) pending.push({ plan, x: run });
        else {
          const x = (await run).x as Float32Array;
          sec.transform += now() - t;
          scatter(plan, x, plan.kind === 'key' ? host : undefined);
        }
      }
      for (const { plan, x: p } of pending) {
        const t = now();
        const x = (await p).x as Float32Array;
        sec.transform += now() - t;
        scatter(plan, x, plan.kind === 'key' ? host : undefined);
      }
      // A float16 cache is restored as float16: reconstructions beyond its range saturate at
      // ±65504 (the nearest value it holds) instead of becoming ∞ when rounded.
      if (header.fp16) for (const a of [...cache.keys, ...cache.values]) saturateHalf(a, kvHeads, tokens, headDim, sink, n);
    }
    sec.total = now() - t0;
    return { cache, stats: { tokens, seconds: sec } };
  }

  async release(): Promise<void> {
    await this.transform.release();
  }
}

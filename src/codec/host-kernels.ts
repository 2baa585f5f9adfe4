/**
 * Host kernels of the codec: gather of a plan's heads (keys un-rotated, squares summed for the
 * range check), scatter back (keys re-rotated), and fp16 saturation of a decoded float16 cache.
 * On the CPU, RoPE runs here instead of in the graphs, with the same float32 bits.
 */
import { ropePairs } from '../rope/codec-rope.js';
import type { RopeSpec } from '../rope/types.js';

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
  /**
   * Undo tables of a layer with an attention factor f hold cos/f, sin/f: the squares of the
   * rotated pairs are scaled by 1/f² (this) so the range check sums the un-rotated key's. Absent: 1.
   */
  pairSquareScale?: number;
}

/** `tables`: src/rope/codec-rope.ts cacheTables' undo tables (gather) or apply tables (scatter). */
export function hostRope(rope: RopeSpec, headDim: number, tables: { cos: Float32Array; sin: Float32Array }): HostRope {
  const idx = ropePairs(rope, headDim);
  const f = rope.attentionFactor ?? 1;
  return {
    cos: tables.cos,
    sin: tables.sin,
    half: idx.a.length,
    a: Int32Array.from(idx.a),
    b: Int32Array.from(idx.b),
    rest: Int32Array.from(idx.rest),
    ...(f !== 1 ? { pairSquareScale: 1 / (f * f) } : {}),
  };
}

/** The RoPE of layer li of a plan: one HostRope for all of its layers, or one per layer (undefined: none). */
export type PlanHostRope = HostRope | readonly (HostRope | undefined)[] | undefined;

function layerRope(rope: PlanHostRope, li: number): HostRope | undefined {
  return Array.isArray(rope) ? rope[li] : (rope as HostRope | undefined);
}

const f = Math.fround;

/**
 * Rotates n rows of headDim from src[s..] into dst[d..] (may not alias): apply RoPE, or undo it
 * (rotation by −θ), with row t using cos/sin row t. Pairs (a, b): a' = a·c ∓ b·s, b' = b·c ± a·s.
 */
function rotateRows(
  src: Float32Array,
  s: number,
  dst: Float32Array,
  d: number,
  n: number,
  headDim: number,
  rope: HostRope,
  undo: boolean,
  norms?: Float64Array,
): void {
  const { cos, sin, half, a: ia, b: ib, rest } = rope;
  const ps = rope.pairSquareScale ?? 1;
  const halfLayout = ps === 1 && rest.length === 0 && ib[0] === half; // rotate_half over the whole head: no index arrays
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
      if (ps !== 1) q *= ps;
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
 * a RoPE is given (token k at table row k): one for every layer, or one per layer of the plan. The hot-path twin of features.ts's gatherFeatures:
 * float32 arithmetic from the precomputed cos/sin tables, exactly as the ONNX graph computes
 * it, where features.ts is the float64 reference.
 */
export function gatherHeads(
  src: Float32Array[],
  layers: number[],
  kvHeads: number,
  headDim: number,
  tokens: number,
  t0: number,
  n: number,
  x: Float32Array,
  planRope: PlanHostRope,
  norms: Float64Array,
): void {
  const run = n * headDim;
  norms.fill(0, 0, n);
  for (let li = 0; li < layers.length; li++) {
    const a = src[layers[li]];
    const rope = layerRope(planRope, li);
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
export function scatterHeads(
  x: Float32Array,
  dst: Float32Array[],
  layers: number[],
  kvHeads: number,
  headDim: number,
  tokens: number,
  t0: number,
  n: number,
  planRope?: PlanHostRope,
): void {
  const run = n * headDim;
  for (let li = 0; li < layers.length; li++) {
    const a = dst[layers[li]];
    const rope = layerRope(planRope, li);
    for (let h = 0; h < kvHeads; h++) {
      const s = (li * kvHeads + h) * run;
      const d = (h * tokens + t0) * headDim;
      if (rope) rotateRows(x, s, a, d, n, headDim, rope, false);
      else a.set(x.subarray(s, s + run), d);
    }
  }
}

/** fp16's largest finite value. */
const HALF_MAX = 65504;

/** Clamps tokens [t0, t0 + n) of one [kvHeads, tokens, headDim] tensor to ±65504. */
export function saturateHalf(a: Float32Array, kvHeads: number, tokens: number, headDim: number, t0: number, n: number): void {
  for (let h = 0; h < kvHeads; h++) {
    for (let i = (h * tokens + t0) * headDim, e = i + n * headDim; i < e; i++) {
      const v = a[i];
      if (v > HALF_MAX) a[i] = HALF_MAX;
      else if (v < -HALF_MAX) a[i] = -HALF_MAX;
    }
  }
}

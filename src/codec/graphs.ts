/**
 * The codec's matrix work as ONNX graphs, so the same path runs on ONNX Runtime's CPU and
 * CUDA providers. One encode and one decode graph per basis plan, over its k stored
 * components (dropped components are never multiplied), in the cache's own per-head layout
 * (G = layers × KV heads of the plan, so a head's n compressed tokens are one contiguous run):
 *
 *   encode:  x [G, n, hd] (keys as the model stores them, RoPE applied), cos/sin [n, R/2]
 *            ─ undo RoPE (keys only) ─ (x − μ) · Vₛ ─▶ coeffs [k, n] (component-major)
 *   decode:  coeffs [k, n], cos/sin [n, R/2] ─ cᵀ · Vₛᵀ + μ ─ redo RoPE (keys only) ─▶ x [G, n, hd]
 *
 * cos/sin are computed in float64 on the host (angles reach 1e5 rad at long contexts,
 * where float32 angle products lose the phase) and fed as float32 inputs.
 */
import type { RopeSpec } from '../model/types.js';
import { GraphBuilder } from '../onnx/builder.js';
import { storedComponents } from './payload.js';
import type { BasisPlan } from './types.js';

export interface RopeIndex {
  /** Within-head indices of the first and second element of each rotated pair, and the untouched rest. */
  a: number[];
  b: number[];
  rest: number[];
  /** Gather indices that put [a, b, rest] back into head order. */
  inverse: number[];
}

export function ropePairs(rope: RopeSpec, headDim: number): RopeIndex {
  const half = rope.rotaryDim / 2;
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < half; i++) {
    if (rope.layout === 'half') {
      a.push(i);
      b.push(i + half);
    } else {
      a.push(2 * i);
      b.push(2 * i + 1);
    }
  }
  const rest: number[] = [];
  for (let d = rope.rotaryDim; d < headDim; d++) rest.push(d);
  const order = [...a, ...b, ...rest];
  const inverse = new Array<number>(headDim);
  order.forEach((d, k) => (inverse[d] = k));
  return { a, b, rest, inverse };
}

/** cos/sin tables [n, rotaryDim/2] (float32) for absolute positions start..start+n-1, computed in float64. */
export function ropeTables(invFreq: Float64Array, start: number, n: number): { cos: Float32Array; sin: Float32Array } {
  const h = invFreq.length;
  const cos = new Float32Array(n * h);
  const sin = new Float32Array(n * h);
  for (let t = 0; t < n; t++) {
    const pos = start + t;
    for (let i = 0; i < h; i++) {
      const ang = pos * invFreq[i];
      cos[t * h + i] = Math.cos(ang);
      sin[t * h + i] = Math.sin(ang);
    }
  }
  return { cos, sin };
}

/**
 * Adds RoPE (apply or undo) on x [G, n, headDim] (G = layers × KV heads of the plan, the
 * cache's own layout), with cos/sin [n, R/2] broadcast over G; returns [G, n, headDim].
 */
function ropeNodes(g: GraphBuilder, x: string, idx: RopeIndex, undo: boolean): string {
  const a = g.op('Gather', [x, g.i64(idx.a, 'ia')], { axis: 2 });
  const b = g.op('Gather', [x, g.i64(idx.b, 'ib')], { axis: 2 });
  const axes = g.i64([0], 'axes');
  const c = g.op('Unsqueeze', ['cos', axes]);
  const s = g.op('Unsqueeze', ['sin', axes]);
  // apply: a' = a·c − b·s, b' = b·c + a·s;  undo: the rotation by −θ.
  const ac = g.op('Mul', [a, c]);
  const bs = g.op('Mul', [b, s]);
  const bc = g.op('Mul', [b, c]);
  const as = g.op('Mul', [a, s]);
  const a2 = g.op(undo ? 'Add' : 'Sub', [ac, bs]);
  const b2 = g.op(undo ? 'Sub' : 'Add', [bc, as]);
  const parts = [a2, b2];
  if (idx.rest.length) parts.push(g.op('Gather', [x, g.i64(idx.rest, 'irest')], { axis: 2 }));
  const cat = g.op('Concat', parts, { axis: 2 });
  return g.op('Gather', [cat, g.i64(idx.inverse, 'iinv')], { axis: 2 });
}

export interface GraphContext {
  rope: RopeSpec;
  headDim: number;
}

/**
 * The basis columns of the stored components (storedComponents order), transposed: [k, p].
 * Dropped components contribute nothing, so the graphs never multiply by them.
 */
function storedBasisT(plan: BasisPlan): { vt: Float32Array; k: number } {
  const idx = storedComponents(plan);
  const p = plan.dim;
  const r = plan.rank;
  const k = idx.length;
  const vt = new Float32Array(k * p);
  for (let j = 0; j < k; j++) for (let i = 0; i < p; i++) vt[j * p + i] = plan.basis[i * r + idx[j]];
  return { vt, k };
}

/**
 * encode: x [G, n, hd] ─ (undo RoPE) ─ − μ ─▶ [n, p] ─ Vₛᵀ · xᵀ ─▶ coeffs [k, n]
 * (stored components only, component-major: the order the quantizer reads them in).
 */
export function buildEncodeGraph(plan: BasisPlan, ctx: GraphContext): Uint8Array {
  const g = new GraphBuilder(`kvtc_encode_${plan.kind}_${plan.layers.join('_')}`);
  const p = plan.dim;
  const hd = ctx.headDim;
  const G = p / hd;
  const { vt, k } = storedBasisT(plan);
  let x = g.input('x', 'float32', [G, 'n', hd]);
  if (plan.kind === 'key') {
    g.input('cos', 'float32', ['n', ctx.rope.rotaryDim / 2]);
    g.input('sin', 'float32', ['n', ctx.rope.rotaryDim / 2]);
    x = ropeNodes(g, x, ropePairs(ctx.rope, hd), true);
  }
  const centred = g.op('Sub', [x, g.constant('mean', plan.mean, [G, 1, hd])]);
  const rows = g.op('Reshape', [g.op('Transpose', [centred], { perm: [1, 0, 2] }), g.i64([-1, p], 'shape')]);
  const coeffs = g.op('Gemm', [g.constant('basisT', vt, [k, p]), rows], { transB: 1 });
  g.output(coeffs, 'coeffs', 'float32', [k, 'n']);
  return g.toModel({ docString: 'kvtc encode: (undo RoPE) → subtract mean → project on the stored PCA components' });
}

/** decode: coeffs [k, n] ─ cᵀ · Vₛ per head ─ + μ ─ (redo RoPE) ─▶ x [G, n, hd], the cache's layout. */
export function buildDecodeGraph(plan: BasisPlan, ctx: GraphContext): Uint8Array {
  const g = new GraphBuilder(`kvtc_decode_${plan.kind}_${plan.layers.join('_')}`);
  const p = plan.dim;
  const hd = ctx.headDim;
  const G = p / hd;
  const { vt, k } = storedBasisT(plan);
  // Vₛᵀ [k, p] viewed per head: [k, G, hd] → [G, k, hd].
  const perHead = new Float32Array(k * p);
  for (let h = 0; h < G; h++) for (let j = 0; j < k; j++) perHead.set(vt.subarray(j * p + h * hd, j * p + (h + 1) * hd), (h * k + j) * hd);
  const c = g.input('coeffs', 'float32', [k, 'n']);
  const rows = g.op('Transpose', [c], { perm: [1, 0] });
  let x = g.op('Add', [g.op('MatMul', [rows, g.constant('basisT', perHead, [G, k, hd])]), g.constant('mean', plan.mean, [G, 1, hd])]);
  if (plan.kind === 'key') {
    g.input('cos', 'float32', ['n', ctx.rope.rotaryDim / 2]);
    g.input('sin', 'float32', ['n', ctx.rope.rotaryDim / 2]);
    x = ropeNodes(g, x, ropePairs(ctx.rope, hd), false);
  }
  g.output(x, 'x', 'float32', [G, 'n', hd]);
  return g.toModel({ docString: 'kvtc decode: reconstruct from the stored PCA coefficients → add mean → (redo RoPE)' });
}

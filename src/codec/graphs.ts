/**
 * The codec's matrix work as ONNX graphs, so the same path runs on ONNX Runtime's CPU and
 * CUDA providers. One encode and one decode graph per basis plan:
 *
 *   encode:  x [n, p] (keys as the model stores them, RoPE applied), cos/sin [n, R/2]
 *            ─ undo RoPE (keys only) ─ (x − μ) · V ─▶ coeffs [n, r]
 *   decode:  coeffs [n, r], cos/sin [n, R/2] ─ c · Vᵀ + μ ─ redo RoPE (keys only) ─▶ x [n, p]
 *
 * cos/sin are computed in float64 on the host (angles reach 1e5 rad at long contexts,
 * where float32 angle products lose the phase) and fed as float32 inputs.
 */
import type { RopeSpec } from '../model/types.js';
import { GraphBuilder } from '../onnx/builder.js';
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

/** Adds RoPE (apply or undo) on x [n, p] viewed as [n, p/headDim, headDim]; returns [n, p]. */
function ropeNodes(g: GraphBuilder, x: string, p: number, headDim: number, idx: RopeIndex, undo: boolean): string {
  const x3 = g.op('Reshape', [x, g.i64([-1, p / headDim, headDim])]);
  const a = g.op('Gather', [x3, g.i64(idx.a, 'ia')], { axis: 2 });
  const b = g.op('Gather', [x3, g.i64(idx.b, 'ib')], { axis: 2 });
  const axes = g.i64([1], 'axes');
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
  if (idx.rest.length) parts.push(g.op('Gather', [x3, g.i64(idx.rest, 'irest')], { axis: 2 }));
  const cat = g.op('Concat', parts, { axis: 2 });
  const ordered = g.op('Gather', [cat, g.i64(idx.inverse, 'iinv')], { axis: 2 });
  return g.op('Reshape', [ordered, g.i64([-1, p])]);
}

export interface GraphContext {
  rope: RopeSpec;
  headDim: number;
}

function transpose(basis: Float32Array, p: number, r: number): Float32Array {
  const t = new Float32Array(r * p);
  for (let i = 0; i < p; i++) for (let j = 0; j < r; j++) t[j * p + i] = basis[i * r + j];
  return t;
}

export function buildEncodeGraph(plan: BasisPlan, ctx: GraphContext): Uint8Array {
  const g = new GraphBuilder(`kvtc_encode_${plan.kind}_${plan.layers.join('_')}`);
  const p = plan.dim;
  const r = plan.rank;
  let x = g.input('x', 'float32', ['n', p]);
  if (plan.kind === 'key') {
    g.input('cos', 'float32', ['n', ctx.rope.rotaryDim / 2]);
    g.input('sin', 'float32', ['n', ctx.rope.rotaryDim / 2]);
    x = ropeNodes(g, x, p, ctx.headDim, ropePairs(ctx.rope, ctx.headDim), true);
  }
  const centred = g.op('Sub', [x, g.constant('mean', plan.mean, [p])]);
  const coeffs = g.op('MatMul', [centred, g.constant('basis', plan.basis, [p, r])]);
  g.output(coeffs, 'coeffs', 'float32', ['n', r]);
  return g.toModel({ docString: 'kvtc encode: (undo RoPE) → subtract mean → project on PCA basis' });
}

export function buildDecodeGraph(plan: BasisPlan, ctx: GraphContext): Uint8Array {
  const g = new GraphBuilder(`kvtc_decode_${plan.kind}_${plan.layers.join('_')}`);
  const p = plan.dim;
  const r = plan.rank;
  const c = g.input('coeffs', 'float32', ['n', r]);
  let x = g.op('Add', [g.op('MatMul', [c, g.constant('basisT', transpose(plan.basis, p, r), [r, p])]), g.constant('mean', plan.mean, [p])]);
  if (plan.kind === 'key') {
    g.input('cos', 'float32', ['n', ctx.rope.rotaryDim / 2]);
    g.input('sin', 'float32', ['n', ctx.rope.rotaryDim / 2]);
    x = ropeNodes(g, x, p, ctx.headDim, ropePairs(ctx.rope, ctx.headDim), false);
  }
  g.output(x, 'x', 'float32', ['n', p]);
  return g.toModel({ docString: 'kvtc decode: reconstruct from PCA coefficients → add mean → (redo RoPE)' });
}

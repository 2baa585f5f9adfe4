// Tested by test/codec/codec.test.ts.
/**
 * The codec's matrix work as ONNX graphs, so the same path runs on ONNX Runtime's CPU and
 * CUDA providers. One encode and one decode graph per basis plan, over its k stored
 * components (dropped components are never multiplied), in the cache's own per-head layout
 * (G = layers × KV heads of the plan, so a head's n compressed tokens are one contiguous run):
 *
 *   encode:  x [G, n, hd] (keys as the model stores them, RoPE applied), cos/sin [n, R/2] (one
 *            pair per distinct RoPE among the plan's layers: src/rope/codec-rope.ts)
 *            ─ undo RoPE (keys only) ─ (x − μ) · Vₛ ─▶ codes [kA, n] of the static int components
 *            (quantized in the graph) and coeffs [kB, n] of the others (component-major)
 *   decode:  codes, coeffs, cos/sin ─ dequantize + cᵀ · Vₛᵀ + μ ─ redo RoPE (keys only) ─▶ x [G, n, hd]
 *
 * cos/sin are computed in float64 on the host (angles reach 1e5 rad at long contexts,
 * where float32 angle products lose the phase) and fed as float32 inputs.
 */
import { GraphBuilder } from '../onnx/builder.js';
import { planRope, ropeNodes } from '../rope/codec-rope.js';
import type { ModelRope } from '../rope/types.js';
import { splitStored } from './payload.js';
import type { BasisPlan } from './types.js';

export { ropePairs, ropeTables, type RopeIndex } from '../rope/codec-rope.js';

export interface GraphContext {
  headDim: number;
  /** RoPE of each layer of the model: key graphs un-rotate (encode) and re-rotate (decode) each
   * layer of the plan with its own (src/rope/codec-rope.ts). Absent: the graphs have no RoPE
   * nodes and the caller rotates keys itself (the CPU path, on the host). */
  rope?: ModelRope;
}

/** x with the plan's RoPE applied or undone (keys with ctx.rope only). */
function keyRope(g: GraphBuilder, x: string, plan: BasisPlan, ctx: GraphContext, undo: boolean): string {
  if (plan.kind !== 'key' || !ctx.rope) return x;
  const kvHeads = plan.dim / ctx.headDim / plan.layers.length;
  return ropeNodes(g, x, planRope(ctx.rope, plan.layers), kvHeads, ctx.headDim, undo);
}

/** What both graphs of a plan start from: the builder, p, head_dim, G = p / head_dim, the stored split. */
function graphSetup(dir: 'encode' | 'decode', plan: BasisPlan, ctx: GraphContext) {
  const sp = splitStored(plan);
  const g = new GraphBuilder(`kvtc_${dir}_${plan.kind}_${plan.layers.join('_')}`);
  return { g, p: plan.dim, hd: ctx.headDim, G: plan.dim / ctx.headDim, sp, kA: sp.affine.length, kB: sp.other.length };
}

/** Basis columns `idx` transposed and scaled: out[j, i] = basis[i, idx[j]] · scale[j] → [k, p]. */
function columnsT(plan: BasisPlan, idx: Int32Array, scale?: (j: number) => number): Float32Array {
  const p = plan.dim;
  const r = plan.rank;
  const out = new Float32Array(idx.length * p);
  for (let j = 0; j < idx.length; j++) {
    const s = scale ? scale(j) : 1;
    for (let i = 0; i < p; i++) out[j * p + i] = plan.basis[i * r + idx[j]] * s;
  }
  return out;
}

/** [k, p] (rows over features head-major) → [G, k, hd]: per head, the k rows' hd slice. */
function perHead(rows: Float32Array, k: number, p: number, hd: number): Float32Array {
  const G = p / hd;
  const out = new Float32Array(k * p);
  for (let h = 0; h < G; h++) for (let j = 0; j < k; j++) out.set(rows.subarray(j * p + h * hd, j * p + (h + 1) * hd), (h * k + j) * hd);
  return out;
}

/**
 * encode: x [G, n, hd] ─ (undo RoPE) ─ − μ ─▶ rows [n, p], then per stored component, component-major:
 *   affine components (static int groups, payload.ts's splitStored):
 *     codes [kA, n] = Cast⟨uint8⟩(clamp(⌊(Vₐ/s)ᵀ·xᵀ + (½ − o/s)⌋, 0, levels))   — quantized here
 *   the others (dynamic, static fp8):  coeffs [kB, n] = V_bᵀ · xᵀ               — quantized on the host
 * (o, s: the component's static offset and scale; s = 0 stores code 0.)
 */
export function buildEncodeGraph(plan: BasisPlan, ctx: GraphContext): Uint8Array {
  const { g, p, hd, G, sp, kA, kB } = graphSetup('encode', plan, ctx);
  let x = g.input('x', 'float32', [G, 'n', hd]);
  x = keyRope(g, x, plan, ctx, true);
  const centred = g.op('Sub', [x, g.constant('mean', plan.mean, [G, 1, hd])]);
  const rows = g.op('Reshape', [g.op('Transpose', [centred], { perm: [1, 0, 2] }), g.i64([-1, p], 'shape')]);
  if (kA > 0) {
    const inv = (j: number) => (sp.scale[j] > 0 ? 1 / sp.scale[j] : 0);
    const bias = Float32Array.from({ length: kA }, (_, j) => 0.5 - sp.offset[j] * inv(j));
    const u = g.op('Gemm', [g.constantOwned('basisA', columnsT(plan, sp.affine, inv), [kA, p]), rows, g.constant('biasA', bias, [kA, 1])], {
      transB: 1,
    });
    const q = g.op('Max', [
      g.op('Min', [g.op('Floor', [u]), g.constant('levels', Float32Array.from(sp.levels), [kA, 1])]),
      g.constant('zero', new Float32Array([0]), []),
    ]);
    g.output(g.op('Cast', [q], { to: 2 }), 'codes', 'uint8', [kA, 'n']);
  }
  if (kB > 0)
    g.output(g.op('Gemm', [g.constantOwned('basisB', columnsT(plan, sp.other), [kB, p]), rows], { transB: 1 }), 'coeffs', 'float32', [
      kB,
      'n',
    ]);
  return g.toModel({
    docString: 'kvtc encode: (undo RoPE) → subtract mean → project on the stored PCA components → quantize the static int ones',
  });
}

/**
 * decode: codes [kA, n] (uint8), coeffs [kB, n] ─ codesᵀ·(s·Vₐ)ᵀ + coeffsᵀ·V_bᵀ + (μ + Vₐ·o) per head
 * ─ (redo RoPE) ─▶ x [G, n, hd], the cache's layout. The static dequantization o + code·s is
 * folded into the basis and the mean (in float64, rounded once to float32).
 */
export function buildDecodeGraph(plan: BasisPlan, ctx: GraphContext): Uint8Array {
  const { g, p, hd, G, sp, kA, kB } = graphSetup('decode', plan, ctx);
  const terms: string[] = [];
  if (kA > 0) {
    const codes = g.op('Cast', [g.input('codes', 'uint8', [kA, 'n'])], { to: 1 });
    const w = perHead(
      columnsT(plan, sp.affine, (j) => sp.scale[j]),
      kA,
      p,
      hd,
    );
    terms.push(g.op('MatMul', [g.op('Transpose', [codes], { perm: [1, 0] }), g.constantOwned('basisA', w, [G, kA, hd])]));
  }
  if (kB > 0) {
    const c = g.input('coeffs', 'float32', [kB, 'n']);
    terms.push(
      g.op('MatMul', [
        g.op('Transpose', [c], { perm: [1, 0] }),
        g.constantOwned('basisB', perHead(columnsT(plan, sp.other), kB, p, hd), [G, kB, hd]),
      ]),
    );
  }
  // μ + Σ_affine o_j·v_j, in float64.
  const mean = Float64Array.from(plan.mean);
  for (let j = 0; j < kA; j++) {
    const o = sp.offset[j];
    if (o === 0) continue;
    for (let i = 0; i < p; i++) mean[i] += o * plan.basis[i * plan.rank + sp.affine[j]];
  }
  const sum = terms.length === 2 ? g.op('Add', terms) : terms[0];
  let x = g.op('Add', [sum, g.constant('mean', Float32Array.from(mean), [G, 1, hd])]);
  x = keyRope(g, x, plan, ctx, false);
  g.output(x, 'x', 'float32', [G, 'n', hd]);
  return g.toModel({
    docString:
      'kvtc decode: dequantize (static groups folded into the basis) → reconstruct from the stored PCA components → add mean → (redo RoPE)',
  });
}

// Tested by test/fit/two-level.test.ts.
/**
 * Two-level PCA for bases over many layers (issue 21): a basis over the layers G is fitted in the
 * span of each layer's own principal components instead of from its p×p covariance.
 *
 *   1. per layer l (features p_l), the eigenbasis U_l of its covariance (the per-layer fit);
 *   2. the reduced layout: the R largest eigenvalues over all layers of one kind (the columns of
 *      B = blockdiag(U_l[:, :r_l]) that lose the least variance for R columns), Σ r_l = R;
 *   3. Z = (X − μ)·B over the fit tokens (spilled to disk in fp16 between the passes), and the
 *      R×R covariance C_Z = ZᵀZ/n − z̄z̄ᵀ, one pass, for every grouping at once: a group's reduced
 *      covariance is the diagonal block of C_Z over its layers' columns;
 *   4. the group's eigenpairs (W, λ) from that block, lifted to V = B_G·W [p_G, k].
 *
 * V is exactly the PCA of the group's features restricted to span(B_G); the variance the
 * restriction can cost is at most the discarded eigenvalues Σ_l Σ_{j ≥ r_l} λ_{l,j}
 * (ReducedLayout.discarded), and the error tables count everything outside span(V) as the
 * residual, so a grouping that loses is measured as losing. With R ≥ Σ p_l nothing is discarded
 * and V spans what the dense covariance's eigenvectors span.
 *
 * Cost, n fit tokens, L layers of p_l features, R reduced columns, k components per group:
 * per-layer covariances n·L·p_l², the projection n·L·p_l·r_l = n·p_l·R, the reduced covariance
 * n·R² (float32 Gemm on ONNX Runtime), the group eigensolves Σ_G R_G²·k, the lift p_G·R_G·k;
 * memory 8·R² bytes for C_Z instead of 8·p_G² per basis. Nothing grows with p_G²·n.
 */
import type * as ortTypes from 'onnxruntime-node';
import { CALIBRATE_DEFAULTS } from '../defaults.js';
import { invariant } from '../errors.js';
import { matMulAsync } from './eigen-ort.js';
import type { Device } from '../onnx/devices.js';

/** Default R, the reduced columns per kind (keys, values): see docs/benchmarks.md, "Two-level fit". */
export const TWO_LEVEL_RANK = CALIBRATE_DEFAULTS.twoLevelRank;

/** Which of each layer's components the reduced basis keeps. */
export interface ReducedLayout {
  /** Features per layer (every layer of one kind has the same p_l). */
  layerDim: number;
  /** [L] components kept per layer: r_l. */
  ranks: number[];
  /** [L] first reduced column of each layer. */
  offsets: number[];
  /** R = Σ r_l. */
  total: number;
  /** [L] variance kept (Σ_{j<r_l} λ_{l,j}) and discarded (the rest), per layer. */
  kept: number[];
  discarded: number[];
}

/**
 * The R largest eigenvalues over all layers: values[l] are layer l's leading eigenvalues,
 * descending (any number up to layerDim: a truncated fit offers fewer), traces[l] its total
 * variance (the covariance's trace), so what is left out is counted whole. Ties go to the
 * earlier layer. R ≥ what is offered keeps everything offered.
 */
export function reducedLayout(values: Float64Array[], traces: number[], layerDim: number, R: number): ReducedLayout {
  invariant(values.length > 0 && traces.length === values.length, 'Error in reducedLayout: one trace per layer, at least one layer');
  invariant(
    values.every((v) => v.length >= 1 && v.length <= layerDim),
    `Error in reducedLayout: every layer offers 1 to layerDim (${layerDim}) eigenvalues`,
  );
  invariant(Number.isInteger(R) && R >= 1, `Error in reducedLayout: R (${R}) must be an integer >= 1`);
  const L = values.length;
  const ranks = new Array<number>(L).fill(0);
  const take = Math.min(
    R,
    values.reduce((a, v) => a + v.length, 0),
  );
  // Merge of L descending lists: the next pick is the largest head (L is small, ≤ a few hundred).
  for (let n = 0; n < take; n++) {
    let best = -1;
    let bestValue = -Infinity;
    for (let l = 0; l < L; l++) {
      if (ranks[l] >= values[l].length) continue;
      const v = values[l][ranks[l]];
      if (v > bestValue) {
        bestValue = v;
        best = l;
      }
    }
    ranks[best]++;
  }
  const offsets: number[] = [];
  const kept: number[] = [];
  const discarded: number[] = [];
  let at = 0;
  for (let l = 0; l < L; l++) {
    offsets.push(at);
    at += ranks[l];
    let k = 0;
    for (let j = 0; j < ranks[l]; j++) k += Math.max(0, values[l][j]);
    kept.push(k);
    discarded.push(Math.max(0, traces[l] - k));
  }
  return { layerDim, ranks, offsets, total: at, kept, discarded };
}

/** Reduced columns of the layers `layers` (indices into the layout), in order. */
export function groupColumns(layout: ReducedLayout, layers: number[]): number[] {
  const cols: number[] = [];
  for (const l of layers) for (let c = 0; c < layout.ranks[l]; c++) cols.push(layout.offsets[l] + c);
  return cols;
}

/** The block C[cols, cols] of the symmetric C [R, R]: Float64Array // [m, m]. */
export function covarianceBlock(C: Float64Array, R: number, cols: number[]): Float64Array {
  const m = cols.length;
  const out = new Float64Array(m * m);
  for (let i = 0; i < m; i++) {
    const row = cols[i] * R;
    for (let j = 0; j < m; j++) out[i * m + j] = C[row + cols[j]];
  }
  return out;
}

/**
 * V = B_G·W: Float32Array // [p_G, k], p_G = layers.length·p_l, from W [R_G, k] (rows: the
 * group's reduced columns, layer by layer) and each layer's eigenvectors U_l [p_l, ≥ r_l]
 * (`vectors[l]`, row-major, `vectorCols[l]` columns). Rows of V follow gatherFeatures' layout
 * (layer, then feature). Each layer's U_l[:, :r_l]·W_l is a float64 product on ONNX Runtime,
 * stored in float32 (as a plan stores its basis): a p_G × k float64 matrix of an all-layer 8B
 * basis would be 1 GiB per kind.
 */
export async function liftVectors(
  layout: ReducedLayout,
  layers: number[],
  vectors: (Float64Array | Float32Array)[],
  vectorCols: number[],
  W: Float64Array,
  k: number,
  device: Device = 'cpu',
): Promise<Float32Array> {
  const p = layout.layerDim;
  const V = new Float32Array(layers.length * p * k);
  let wRow = 0;
  for (const [li, l] of layers.entries()) {
    const r = layout.ranks[l];
    if (r === 0) continue;
    const uc = vectorCols[l];
    invariant(uc >= r, `Error in liftVectors: layer ${l} has ${uc} eigenvectors, the layout keeps ${r}`);
    const U = new Float64Array(p * r);
    for (let i = 0; i < p; i++) for (let c = 0; c < r; c++) U[i * r + c] = vectors[l][i * uc + c];
    const Vl = await matMulAsync(U, W.subarray(wRow * k, (wRow + r) * k), p, r, k, 0, device);
    V.set(Vl, li * p * k);
    wRow += r;
  }
  return V;
}

/**
 * Adds chunks of one kind's features over all layers — x: float16 [n, L·p_l], as spilled — into
 * ZᵀZ and Σ Z with Z = (x − μ)·blockdiag(U_l[:, :r_l]) [n, R], on ONNX Runtime (float32 products,
 * float64 accumulation here). `finish` gives the reduced covariance C_Z [R, R].
 */
export class ReducedGram {
  private readonly s2: Float64Array;
  private readonly s1: Float64Array;
  private n = 0;

  private constructor(
    private readonly session: ortTypes.InferenceSession,
    private readonly ort: typeof ortTypes,
    readonly features: number,
    readonly R: number,
  ) {
    this.s2 = new Float64Array(R * R);
    this.s1 = new Float64Array(R);
  }

  /**
   * `mean` [L·p_l] float64, the features' mean (from the per-layer covariances), `vectors[l]`
   * U_l [p_l, vectorCols[l]] row-major float64.
   */
  static async create(
    layout: ReducedLayout,
    mean: Float64Array,
    vectors: (Float64Array | Float32Array)[],
    vectorCols: number[],
    opts: { device?: Device; threads?: number } = {},
  ): Promise<ReducedGram> {
    const { GraphBuilder } = await import('../onnx/builder.js');
    const { createSession, ort } = await import('../onnx/session.js');
    const L = layout.ranks.length;
    const p = layout.layerDim;
    const P = L * p;
    invariant(mean.length === P, `Error in ReducedGram: mean length (${mean.length}) must be L·p_l (${P})`);
    invariant(layout.total >= 1, 'Error in ReducedGram: the layout keeps no columns');
    const g = new GraphBuilder('kvtc_reduced_gram');
    const x = g.input('x', 'float16', ['tokens', P]);
    const xf = g.op('Cast', [x], { to: 1 });
    const y = g.op('Sub', [xf, g.constant('mean', Float32Array.from(mean), [P])]);
    const parts = g.opN('Split', [y, g.i64(new Array(L).fill(p), 'split')], { axis: 1 }, { outputs: L });
    const zs: string[] = [];
    for (let l = 0; l < L; l++) {
      const r = layout.ranks[l];
      if (r === 0) continue;
      const U = new Float32Array(p * r);
      const uc = vectorCols[l];
      for (let i = 0; i < p; i++) for (let c = 0; c < r; c++) U[i * r + c] = vectors[l][i * uc + c];
      zs.push(g.op('MatMul', [parts[l], g.constant(`u${l}`, U, [p, r])]));
    }
    const z = zs.length === 1 ? zs[0] : g.op('Concat', zs, { axis: 1 });
    g.output(g.op('Gemm', [z, z], { transA: 1 }), 'gram', 'float32', [layout.total, layout.total]);
    g.output(g.op('ReduceSum', [z, g.i64([0], 'axes')], { keepdims: 0 }), 'zsum', 'float32', [layout.total]);
    const session = await createSession(g.toModel(), { device: opts.device, threads: opts.threads });
    return new ReducedGram(session, ort, P, layout.total);
  }

  /** Adds x: Uint16Array // float16 [tokens, L·p_l] (an exact-size array). */
  async add(x: Uint16Array, tokens: number): Promise<void> {
    const { R } = this;
    invariant(x.length === tokens * this.features, `Error in ReducedGram.add: x length (${x.length}) must be tokens·features`);
    const res = await this.session.run({ x: new this.ort.Tensor('float16', x, [tokens, this.features]) });
    const G = res.gram.data as Float32Array;
    const zs = res.zsum.data as Float32Array;
    for (let i = 0; i < R; i++) {
      const o = i * R;
      for (let j = i; j < R; j++) this.s2[o + j] += G[o + j];
      this.s1[i] += zs[i];
    }
    res.gram.dispose?.();
    res.zsum.dispose?.();
    this.n += tokens;
  }

  get count(): number {
    return this.n;
  }

  /** C_Z = ZᵀZ/n − z̄z̄ᵀ: Float64Array // [R, R] symmetric. */
  finish(): Float64Array {
    const { R, n } = this;
    invariant(n > 0, 'Error in ReducedGram.finish: no tokens were added');
    const C = new Float64Array(R * R);
    for (let i = 0; i < R; i++) {
      for (let j = i; j < R; j++) {
        const c = this.s2[i * R + j] / n - (this.s1[i] / n) * (this.s1[j] / n);
        C[i * R + j] = c;
        C[j * R + i] = c;
      }
    }
    return C;
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}

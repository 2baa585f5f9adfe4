/**
 * Top-k eigenpairs of a feature covariance too large to hold as p×p float64, from one pass over
 * the streamed features: the fixed-rank streaming Nyström sketch of Tropp, Yurtsever, Udell &
 * Cevher (2017), "Fixed-rank approximation of a positive-semidefinite matrix from streaming
 * data" (NeurIPS 2017, Algorithm 3), applied to the covariance C = (1/n) Σ (x−μ)(x−μ)ᵀ.
 *
 * Stream (memory O(p·l), l = sketch columns):
 *   Ω [p, l] Gaussian, fixed by a seed (mulberry32 + Box–Muller, rounded to float32 once so
 *   the kernel and the Nyström step use the very same matrix);
 *   per chunk X [t, p], centred on a fixed shift s (the first chunk's mean, as covariance.ts):
 *   Yᵀ += (X·Ω)ᵀ·X  ([l, p], one sketch column per contiguous row) and S1 += Σ x − s.
 * Finish: with d = S1/n, CΩ = Y/n − d·(dᵀΩ) (the mean correction, exact: no shift in C).
 * Nyström step (stable form, Tropp et al. §4 / Li, Linderman et al. 2017):
 *   ν = shift; Y_ν = CΩ + ν·Ω; B = Ωᵀ·Y_ν = L·Lᵀ (Cholesky; on failure ν grows ×16);
 *   E = Y_ν·L⁻ᵀ; E = U·Σ·Wᵀ (thin SVD, through the eigendecomposition of EᵀE);
 *   eigenvalues max(0, σ² − ν), eigenvectors the columns of U, cut to the target rank.
 *   U = E·W·Σ⁻¹ is re-orthonormalized by Cholesky-QR (eigen-randomized.ts) so the basis is
 *   orthonormal to rounding, as fit.ts assumes.
 *
 * The sketch is stored float32: the kernels on ONNX Runtime compute each chunk's product in
 * float32 anyway (like covariance.ts's OrtGramKernel), and float32 halves the memory that decides
 * whether an all-layer basis fits the machine at all. Hence ν starts above float32 rounding of
 * the sketch (NU_EPS), not at the float64 level Tropp et al. use: eigenvalues below ~ν are
 * unresolved, which costs nothing where it matters (the DP stores the top components).
 *
 * Accuracy: a one-pass sketch sees A once (no power iterations, unlike eigen-randomized.ts), so
 * it needs more oversampling for the same subspace quality; test/fit/sketch.test.ts measures it.
 * Products of the stream run on ONNX Runtime (float32 Gemm, OrtSketchKernel) from
 * ORT_GRAM_MIN_P on; the Nyström step's products on ONNX Runtime float64 MatMul (eigen-ort.ts)
 * from LARGE_EIGEN_MIN_P on.
 */
import type * as ortTypes from 'onnxruntime-node';
import { invariant } from '../errors.js';
import { gemmABt, transpose } from '../math/gemm.js';
import type { Device } from '../onnx/devices.js';
import { symmetricEigen } from './eigen.js';
import { ShiftedFeatureStream } from './covariance.js';
import { runStepsOnOrt } from './eigen-ort.js';
import { choleskyBlocked, gaussian, orthonormalizeRows, solveLowerRows, truncate, type TruncatedEigen } from './eigen-randomized.js';
import { eigenSteps } from './eigen-steps.js';
import type { MatMulRequest } from './eigen-types.js';
import { LARGE_EIGEN_MIN_P, ORT_GRAM_MIN_P } from './ort-thresholds.js';

type Steps<T> = Generator<MatMulRequest, T, Float64Array>;

/** Fixed default seed of Ω, so calibration is deterministic. */
export const SKETCH_SEED = 0x736b7463; // 'sktc'

/**
 * Most sketch columns l (target rank + oversampling) per basis. Bounds memory (8·p·l bytes:
 * the float32 sketch and Ω) and the stream's cost (4·p·l multiply-adds per token); at the cap the
 * target rank is cut to SKETCH_MAX_COLUMNS / SKETCH_CAPPED_RATIO so the kept components still
 * have oversampling behind them.
 */
export const SKETCH_MAX_COLUMNS = 4096;
export const SKETCH_CAPPED_RATIO = 1.25;

/** Oversampling for target rank r: a one-pass sketch needs more than subspace iteration (tested). */
export function sketchOversample(r: number): number {
  return Math.max(16, Math.ceil(r / 4));
}

/** Columns l and the rank kept for a basis of p features whose plans store at most `rank` components. */
export function sketchShape(p: number, rank: number, maxColumns = SKETCH_MAX_COLUMNS): { columns: number; rank: number } {
  invariant(Number.isInteger(rank) && rank >= 1, `Error in sketchShape: rank (${rank}) must be an integer >= 1`);
  const cap = Math.min(p, maxColumns);
  const want = rank + sketchOversample(rank);
  if (want <= cap) return { columns: want, rank };
  return { columns: cap, rank: Math.max(1, Math.min(rank, Math.floor(cap / SKETCH_CAPPED_RATIO))) };
}

/** Bytes a sketch of p features and l columns holds while streaming (float32 sketch + Ω). */
export function sketchBytes(p: number, columns: number): number {
  return 8 * p * columns;
}

/** Ωᵀ [l, p] float32: row j is column j of Ω. Columns are drawn in order, so a wider Ω extends a narrower one. */
export function sketchTestMatrix(p: number, columns: number, seed = SKETCH_SEED): Float32Array {
  const normal = gaussian(seed);
  const out = new Float32Array(columns * p);
  for (let i = 0; i < out.length; i++) out[i] = normal();
  return out;
}

/** Adds (X·Ω)ᵀ·X [l, p] of a centred chunk X [tokens, p] into the float32 sketch Yᵀ. */
export interface SketchKernel {
  readonly name: string;
  readonly maxTokens: number;
  addSketch(X: Float32Array, tokens: number, Yt: Float32Array): Promise<void> | void;
  dispose?(): Promise<void> | void;
}

/** float64 JS kernel (tests, small p): Z = X·Ω, then Yᵀ += Zᵀ·X, rounded into the float32 sketch. */
export class JsSketchKernel implements SketchKernel {
  readonly name = 'js';
  readonly maxTokens = 256;
  private readonly omegaT: Float64Array;
  constructor(
    omegaT: Float32Array,
    readonly p: number,
    readonly columns: number,
  ) {
    this.omegaT = Float64Array.from(omegaT);
  }

  addSketch(X: Float32Array, tokens: number, Yt: Float32Array): void {
    const { p, columns: l } = this;
    const X64 = Float64Array.from(X.subarray(0, tokens * p));
    const Z = gemmABt(X64, this.omegaT, new Float64Array(tokens * l), tokens, l, p); // [t, l]
    const part = gemmABt(transpose(Z, tokens, l), transpose(X64, tokens, p), new Float64Array(l * p), l, p, tokens);
    for (let i = 0; i < part.length; i++) Yt[i] += part[i];
  }
}

/** ONNX Runtime kernel: Z = Gemm(X, Ωᵀ, transB=1), Yᵀ = Gemm(Z, X, transA=1), float32, Ω fed per call. */
export class OrtSketchKernel implements SketchKernel {
  readonly name = 'ort';
  private constructor(
    private readonly session: ortTypes.InferenceSession,
    private readonly ort: typeof ortTypes,
    private readonly omegaT: Float32Array,
    readonly p: number,
    readonly columns: number,
    readonly maxTokens: number,
  ) {}

  static async create(
    omegaT: Float32Array,
    p: number,
    columns: number,
    opts: { device?: Device; threads?: number; maxTokens?: number } = {},
  ): Promise<OrtSketchKernel> {
    const { GraphBuilder } = await import('../onnx/builder.js');
    const { createSession, ort } = await import('../onnx/session.js');
    const g = new GraphBuilder('kvtc_sketch');
    const x = g.input('x', 'float32', ['tokens', p]);
    const w = g.input('omega_t', 'float32', [columns, p]);
    const z = g.op('Gemm', [x, w], { transB: 1 });
    g.output(g.op('Gemm', [z, x], { transA: 1 }), 'yt', 'float32', [columns, p]);
    const session = await createSession(g.toModel(), { device: opts.device, threads: opts.threads });
    return new OrtSketchKernel(session, ort, omegaT, p, columns, opts.maxTokens ?? 1024);
  }

  async addSketch(X: Float32Array, tokens: number, Yt: Float32Array): Promise<void> {
    const { p, columns } = this;
    // ORT reads the whole backing buffer of a view: pass an exact-size array.
    const x = X.length === tokens * p && X.byteOffset === 0 ? X : X.slice(0, tokens * p);
    const res = await this.session.run({
      x: new this.ort.Tensor('float32', x, [tokens, p]),
      omega_t: new this.ort.Tensor('float32', this.omegaT, [columns, p]),
    });
    const part = res.yt.data as Float32Array;
    for (let i = 0; i < part.length; i++) Yt[i] += part[i];
    res.yt.dispose?.();
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}

/** What a finished sketch gives the Nyström step. */
export interface SketchResult {
  /** [p] float64 mean. */
  mean: Float64Array;
  /** (C·Ω)ᵀ [l, p] float64, mean-corrected. */
  cOmegaT: Float64Array;
  /** Ωᵀ [l, p]. */
  omegaT: Float32Array;
  count: number;
  p: number;
  columns: number;
}

/** The streaming half: Σ (x−s) and (Σ (x−s)(x−s)ᵀ)·Ω over any number of tokens, memory O(p·l). */
export class SketchAccumulator {
  private readonly yt: Float32Array;
  private readonly stream: ShiftedFeatureStream;

  constructor(
    readonly p: number,
    readonly columns: number,
    readonly omegaT: Float32Array,
    readonly kernel: SketchKernel,
  ) {
    this.stream = new ShiftedFeatureStream(p, kernel.maxTokens, 'SketchAccumulator');
    invariant(
      Number.isInteger(columns) && columns >= 1 && columns <= p && omegaT.length === columns * p,
      `Error in SketchAccumulator: columns (${columns}) must be in [1, p=${p}] with Ωᵀ of columns*p entries (got ${omegaT.length})`,
    );
    this.yt = new Float32Array(columns * p);
  }

  get count(): number {
    return this.stream.count;
  }

  /** Adds X: Float32Array // [tokens, p] token-major. Await it before touching X again. */
  async add(X: Float32Array, tokens: number): Promise<void> {
    const { p, stream } = this;
    await stream.add(X, tokens, (Y, n) => this.kernel.addSketch(n === stream.step ? Y : Y.subarray(0, n * p), n, this.yt));
  }

  /** Mean and the mean-corrected C·Ω; the accumulator's buffers may be dropped afterwards. */
  finish(): SketchResult {
    const { p, columns: l } = this;
    const { n, d, mean } = this.stream.means();
    // C = S2/n − d·dᵀ, so CΩ = S2Ω/n − d·(dᵀΩ); row j of (CΩ)ᵀ: yt[j]/n − (dᵀω_j)·dᵀ.
    const out = new Float64Array(l * p);
    for (let j = 0; j < l; j++) {
      const o = j * p;
      let dw = 0;
      for (let i = 0; i < p; i++) dw += d[i] * this.omegaT[o + i];
      for (let i = 0; i < p; i++) out[o + i] = this.yt[o + i] / n - dw * d[i];
    }
    return { mean, cOmegaT: out, omegaT: this.omegaT, count: n, p, columns: l };
  }
}

/** A sketch accumulator for p features and `columns` columns: its kernel on ONNX Runtime from ORT_GRAM_MIN_P on. */
export async function createSketchAccumulator(
  p: number,
  columns: number,
  opts: { device?: Device; seed?: number; kernel?: 'js' | 'ort' } = {},
): Promise<SketchAccumulator> {
  const omegaT = sketchTestMatrix(p, columns, opts.seed);
  const useOrt = opts.kernel ? opts.kernel === 'ort' : p >= ORT_GRAM_MIN_P;
  const kernel = useOrt
    ? await OrtSketchKernel.create(omegaT, p, columns, { device: opts.device })
    : new JsSketchKernel(omegaT, p, columns);
  return new SketchAccumulator(p, columns, omegaT, kernel);
}

/** Relative size of the first shift ν (of ‖C‖_F): above float32 rounding of the sketch. */
const NU_EPS = 2 ** -23;
const NU_GROWTH = 16;
const MAX_NU_TRIES = 12;

/**
 * The Nyström step: the top `rank` (≤ columns) eigenpairs of C from its sketch, as steps
 * (dense products yielded, as eigen-randomized.ts). Components whose σ² does not exceed ν are
 * unresolved and left out, so the result may hold fewer than `rank` (never none).
 */
export function* nystromSteps(s: SketchResult, rank: number): Steps<TruncatedEigen> {
  const { p, columns: l, cOmegaT } = s;
  invariant(
    Number.isInteger(rank) && rank >= 1 && rank <= l,
    `Error in nystromSteps: rank (${rank}) must be an integer in [1, columns=${l}]`,
  );
  const omegaT = s.omegaT; // float32, read as is (a float64 copy would cost another 8·p·l bytes)
  // ‖C‖_F estimate: E‖Cω‖² = ‖C‖_F² for a standard Gaussian ω.
  let ss = 0;
  for (let i = 0; i < cOmegaT.length; i++) ss += cOmegaT[i] * cOmegaT[i];
  const normC = Math.sqrt(ss / l);
  if (!(normC > 0)) {
    // Constant features: no variance, any orthonormal basis (the first unit vectors) with eigenvalue 0.
    const Vt = new Float64Array(rank * p);
    for (let j = 0; j < rank; j++) Vt[j * p + j] = 1;
    return truncate(new Float64Array(rank), Vt, p, rank);
  }
  let nu = NU_EPS * Math.sqrt(p) * normC;
  const OmegaTrans = new Float64Array(p * l); // Ω [p, l]
  for (let j = 0; j < l; j++) for (let i = 0; i < p; i++) OmegaTrans[i * l + j] = omegaT[j * p + i];
  for (let attempt = 0; ; attempt++) {
    invariant(attempt < MAX_NU_TRIES, `Error in nystromSteps: Ωᵀ(CΩ + νΩ) not positive definite up to ν = ${nu} (p=${p}, l=${l})`);
    const Yt = new Float64Array(l * p);
    for (let i = 0; i < Yt.length; i++) Yt[i] = cOmegaT[i] + nu * omegaT[i];
    // B = Ωᵀ·Y_ν = (Y_νᵀ)·Ω [l, l], symmetrized.
    const B = yield { A: Yt, B: OmegaTrans, m: l, k: p, n: l };
    for (let i = 0; i < l; i++) for (let j = i + 1; j < l; j++) B[i * l + j] = B[j * l + i] = (B[i * l + j] + B[j * l + i]) / 2;
    const { L, dependent } = yield* choleskyBlocked(B, l, 0, 0);
    if (dependent.length > 0) {
      nu *= NU_GROWTH;
      continue;
    }
    // Eᵀ = L⁻¹·Y_νᵀ [l, p]; EᵀE = Eᵀ·(Eᵀ)ᵀ [l, l] = W·Σ²·Wᵀ.
    const Et = yield* solveLowerRows(L, Yt, l, p);
    const G = yield { A: Et, B: transpose(Et, l, p), m: l, k: p, n: l };
    for (let i = 0; i < l; i++) for (let j = i + 1; j < l; j++) G[i * l + j] = G[j * l + i] = (G[i * l + j] + G[j * l + i]) / 2;
    const e = l >= LARGE_EIGEN_MIN_P ? yield* eigenSteps(G, l) : symmetricEigen(G, l);
    let r = 0;
    while (r < rank && e.values[r] > nu) r++;
    r = Math.max(r, 1);
    // Uᵀ = Σ⁻¹·Wᵀ[:r]·Eᵀ [r, p].
    const Ws = e.vectorsT.slice(0, r * l);
    for (let j = 0; j < r; j++) {
      const inv = 1 / Math.sqrt(Math.max(e.values[j], Number.MIN_VALUE));
      for (let c = 0; c < l; c++) Ws[j * l + c] *= inv;
    }
    const Ut0 = yield { A: Ws, B: Et, m: r, k: l, n: p };
    const Ut = yield* orthonormalizeRows(Ut0, r, p, gaussian(SKETCH_SEED ^ 0x5a5a5a5a), true);
    const values = new Float64Array(r);
    for (let j = 0; j < r; j++) values[j] = Math.max(0, e.values[j] - nu);
    return truncate(values, Ut, p, r);
  }
}

function jsMatMul({ A, B, m, k, n }: MatMulRequest): Float64Array {
  return gemmABt(A, transpose(B, k, n), new Float64Array(m * n), m, n, k);
}

/** nystromSteps with plain-JS products (tests, small p). */
export function nystromEigen(s: SketchResult, rank: number): TruncatedEigen {
  const steps = nystromSteps(s, rank);
  let r = steps.next(new Float64Array(0));
  while (!r.done) r = steps.next(jsMatMul(r.value));
  return r.value;
}

/** nystromSteps with its products on ONNX Runtime float64 MatMul from LARGE_EIGEN_MIN_P on (plain JS below). */
export async function nystromEigenAsync(s: SketchResult, rank: number, opts: { threads?: number } = {}): Promise<TruncatedEigen> {
  if (s.p < LARGE_EIGEN_MIN_P) return nystromEigen(s, rank);
  return runStepsOnOrt(nystromSteps(s, rank), opts.threads ?? 0);
}

/**
 * Truncated symmetric eigendecomposition by randomized subspace iteration (Halko, Martinsson &
 * Tropp 2011, "Finding structure with randomness", Algorithms 4.4 and 5.3): the top-k
 * eigenpairs of a symmetric positive semidefinite A [p, p] (a covariance) without a dense
 * eigensolve. The paper kvtc follows fits its PCA the same way ("randomized SVD with a target
 * rank r < p", arXiv 2511.01815, §3): the DP never stores more than k = 8p/ratio components
 * (static int2 is the cheapest stored type), so at high ratios most of the spectrum is unused.
 *
 *  1. Ω [p, l] Gaussian (mulberry32 + Box–Muller, seeded), l = k + oversample.
 *  2. Y = A·Ω; then q times: Q = orth(Y), Y = A·Q. The intermediate orth is one shifted
 *     Cholesky-QR pass: it only has to keep the basis well conditioned, not orthonormal.
 *  3. Q = orth(Y) with shifted Cholesky-QR repeated until QᵀQ = I to ORTH_TOL (shifted
 *     CholeskyQR3, Fukaya, Kannan, Nakatsukasa, Yamamoto & Yanagisawa 2020): stable for any
 *     condition number below 1/u; rows it finds numerically dependent (A of rank < l) are
 *     replaced by fresh Gaussian rows, which only add Ritz values ≈ 0. The Cholesky
 *     factorization and the triangular solve are blocked, so their O(l³) and O(l²p) work is
 *     products too.
 *  4. Rayleigh–Ritz: T = QᵀAQ [l, l], T = U·Θ·Uᵀ (symmetricEigen, or eigenSteps for large l),
 *     V = Q·U[:, :k]; Ritz values Θ are the Rayleigh quotients of the returned vectors.
 *
 * Everything is held transposed (Qᵀ [l, p], one basis vector per contiguous row). The dense
 * products are yielded as MatMulRequests, like eigen-steps.ts, so the same code runs with
 * plain-JS products (randomizedEigen) or ONNX Runtime float64 MatMul (randomizedEigenAsync).
 * Timings against the dense solvers: docs/benchmarks.md, "Calibration kernels".
 */
import { invariant } from '../errors.js';
import { gemmABt, transpose } from '../math/gemm.js';
import { mulberry32 } from '../random.js';
import { symmetricEigen } from './eigen.js';
import { type OrtProducts, runStepsOnOrt } from './eigen-ort.js';
import { eigenSteps } from './eigen-steps.js';
import type { EigenWork, MatMulRequest } from './eigen-types.js';
import { LARGE_EIGEN_MIN_P } from './ort-thresholds.js';

/** The top-k eigenpairs of a symmetric A [p, p]. */
export interface TruncatedEigen {
  /** [k] eigenvalues (Ritz values), descending. */
  values: Float64Array;
  /** [p, k] row-major; column j is the unit eigenvector of values[j]. */
  vectors: Float64Array;
  /** [k, p] row-major; row j is the eigenvector of values[j]. */
  vectorsT: Float64Array;
}

export interface RandomizedEigenOptions {
  /** Extra columns beyond k (default max(10, ceil(k/10))). */
  oversample?: number;
  /** Power (subspace) iterations q (default 2). */
  powerIterations?: number;
  /** Seed of the Gaussian test matrix (default RANDOMIZED_EIGEN_SEED). */
  seed?: number;
  /** Hears its phases: the sketch's products with A, then the Rayleigh–Ritz eigensolve's (eigenSteps). */
  onWork?: EigenWork;
}

/**
 * Above this share of p, fit-pool.ts cuts the dense decomposition to k instead: the sketch
 * (l = 1.1k) is then nearly p wide and its Rayleigh–Ritz step nearly a dense eigensolve
 * (measured at p = 1024, one thread, on a loaded box: 1.1–2.2x faster than dense at k = 0.6p,
 * 0.6–1.9x at 0.7p, 0.4–0.8x at 0.8p).
 */
export const RANDOMIZED_MAX_RANK_FRACTION = 0.6;

/** Fixed default seed, so calibration is deterministic without a --seed. */
export const RANDOMIZED_EIGEN_SEED = 0x6b767463; // 'kvtc'
export const DEFAULT_POWER_ITERATIONS = 2;
export function defaultOversample(k: number): number {
  return Math.max(10, Math.ceil(k / 10));
}

const EPS = 2 ** -52;
/** max |QᵀQ − I| accepted as orthonormal. */
const ORTH_TOL = 1e-13;
/** A Cholesky pivot below this (on a Gram whose diagonal is ≤ ~1) marks a dependent row. */
const DEPENDENT_PIVOT = 1e-10;
const MAX_ORTH_PASSES = 8;

type Steps<T> = Generator<MatMulRequest, T, Float64Array>;

/** The top-k eigenpairs of the symmetric PSD A [p, p] (1 ≤ k ≤ p) as steps. */
export function* randomizedEigenSteps(A: Float64Array, p: number, k: number, opts: RandomizedEigenOptions = {}): Steps<TruncatedEigen> {
  invariant(A.length === p * p, `Error in randomizedEigen: A length (${A.length}) must be p*p (${p}*${p})`);
  invariant(Number.isInteger(k) && k >= 1 && k <= p, `Error in randomizedEigen: k (${k}) must be an integer in [1, p=${p}]`);
  const q = opts.powerIterations ?? DEFAULT_POWER_ITERATIONS;
  const l = Math.min(p, k + (opts.oversample ?? defaultOversample(k)));
  const normal = gaussian(opts.seed ?? RANDOMIZED_EIGEN_SEED);
  const onWork = opts.onWork;
  if (l === p) {
    // No room to truncate: the dense decomposition, cut to k.
    const e = p >= LARGE_EIGEN_MIN_P ? yield* eigenSteps(A, p, onWork) : symmetricEigen(A, p);
    return truncate(e.values, e.vectorsT, p, k);
  }
  // The sketch's q + 2 products with A (2·l·p² operations each); its Cholesky-QR passes between them are not counted.
  const sketchTotal = (q + 2) * 2 * l * p * p;
  const sketched = (n: number) => onWork?.('sketch', n * 2 * l * p * p, sketchTotal);
  sketched(0);
  const omegaT = new Float64Array(l * p);
  for (let i = 0; i < omegaT.length; i++) omegaT[i] = normal();
  // Yᵀ = Ωᵀ·A = (A·Ω)ᵀ, A symmetric.
  let Yt = yield { A: omegaT, B: A, m: l, k: p, n: p };
  sketched(1);
  for (let it = 0; it < q; it++) {
    const Qt = yield* orthonormalizeRows(Yt, l, p, normal, false);
    Yt = yield { A: Qt, B: A, m: l, k: p, n: p };
    sketched(2 + it);
  }
  const Qt = yield* orthonormalizeRows(Yt, l, p, normal, true);
  const Zt = yield { A: Qt, B: A, m: l, k: p, n: p }; // QᵀA [l, p]
  sketched(q + 2);
  const T = yield { A: Zt, B: transpose(Qt, l, p), m: l, k: p, n: l }; // QᵀAQ [l, l]
  for (let i = 0; i < l; i++) for (let j = i + 1; j < l; j++) T[i * l + j] = T[j * l + i] = (T[i * l + j] + T[j * l + i]) / 2;
  const rr = onWork && ((phase: string, done: number, total: number) => onWork(`Rayleigh–Ritz ${l} wide, ${phase}`, done, total));
  const ritz = l >= LARGE_EIGEN_MIN_P ? yield* eigenSteps(T, l, rr) : symmetricEigen(T, l);
  // Vᵀ = U[:, :k]ᵀ·Qᵀ [k, p]; rows of ritz.vectorsT are the columns of U.
  const Vt = yield { A: ritz.vectorsT.slice(0, k * l), B: Qt, m: k, k: l, n: p };
  return truncate(ritz.values, Vt, p, k);
}

/** randomizedEigenSteps with plain-JS products (tests, small p). */
export function randomizedEigen(A: Float64Array, p: number, k: number, opts: RandomizedEigenOptions = {}): TruncatedEigen {
  const steps = randomizedEigenSteps(A, p, k, opts);
  let r = steps.next(new Float64Array(0));
  while (!r.done) r = steps.next(jsMatMul(r.value));
  return r.value;
}

/**
 * randomizedEigenSteps with its products on ONNX Runtime float64 MatMul for p ≥ LARGE_EIGEN_MIN_P
 * (plain JS below). `threads`: ORT intra-op threads (0 = all cores; 1 in calibration workers).
 */
export async function randomizedEigenAsync(
  A: Float64Array,
  p: number,
  k: number,
  opts: RandomizedEigenOptions & OrtProducts = {},
): Promise<TruncatedEigen> {
  if (p < LARGE_EIGEN_MIN_P) return randomizedEigen(A, p, k, opts);
  return runStepsOnOrt(randomizedEigenSteps(A, p, k, opts), opts.threads ?? 0, opts.device);
}

function jsMatMul({ A, B, m, k, n }: MatMulRequest): Float64Array {
  return gemmABt(A, transpose(B, k, n), new Float64Array(m * n), m, n, k);
}

/**
 * Rows of Xt [l, p] → an orthonormal basis of their span (rows), by shifted Cholesky-QR:
 * G = X·Xᵀ + s·I = L·Lᵀ, X ← L⁻¹·X. `full` repeats unshifted passes until X·Xᵀ = I to ORTH_TOL;
 * otherwise one shifted pass (a well-conditioned basis of the same span is enough).
 */
export function* orthonormalizeRows(Xt: Float64Array, l: number, p: number, normal: () => number, full: boolean): Steps<Float64Array> {
  let X = Xt;
  let fresh = true; // X not yet through a pass: shift, and skip the orthogonality test
  for (let pass = 0; pass < MAX_ORTH_PASSES; pass++) {
    const G = yield { A: X, B: transpose(X, l, p), m: l, k: p, n: l };
    if (!fresh && offOrthogonality(G, l) <= ORTH_TOL) return X;
    let trace = 0;
    for (let i = 0; i < l; i++) trace += G[i * l + i];
    // Shift of Fukaya et al. (2020) §3 with ‖X‖₂² ≤ trace: the shifted pass makes X well conditioned.
    const shift = fresh ? 11 * (p * l + l * (l + 1)) * EPS * trace : 0;
    const { L, dependent } = yield* choleskyBlocked(G, l, shift, fresh ? 0 : DEPENDENT_PIVOT);
    if (dependent.length > 0) {
      // Rows (numerically) in the span of earlier ones: replace them with fresh unit Gaussian rows.
      X = Float64Array.from(X);
      for (const j of dependent) randomUnitRow(X, j, p, normal);
      fresh = true;
      continue;
    }
    X = yield* solveLowerRows(L, X, l, p);
    if (!full) return X;
    fresh = false;
  }
  invariant(false, `Error in randomizedEigen: rows not orthonormal after ${MAX_ORTH_PASSES} Cholesky-QR passes (l=${l}, p=${p})`);
}

/** Block size of the blocked Cholesky factorization and triangular solve. */
const NB = 128;

/**
 * Lower-triangular L [l, l] with L·Lᵀ = G + shift·I, blocked (left-looking, LAPACK dpotrf's
 * order) so that the O(l³) work is yielded as products. Pivots ≤ `dependentPivot` mark dependent
 * rows: listed, and factored as removed (unit diagonal, zero elsewhere in their row and column)
 * so the other rows still factor exactly.
 */
export function* choleskyBlocked(
  G: Float64Array,
  l: number,
  shift: number,
  dependentPivot: number,
): Steps<{ L: Float64Array; dependent: number[] }> {
  const L = new Float64Array(l * l);
  const dependent: number[] = [];
  for (let j0 = 0; j0 < l; j0 += NB) {
    const j1 = Math.min(l, j0 + NB);
    const b = j1 - j0;
    const below = l - j1;
    // S = G[J, J] + shift·I − L[J, :j0]·L[J, :j0]ᵀ
    const S = block(G, l, j0, j1, j0, j1);
    for (let i = 0; i < b; i++) S[i * b + i] += shift;
    const LJt = j0 > 0 ? transpose(block(L, l, j0, j1, 0, j0), b, j0) : undefined; // [j0, b]
    if (LJt) subtract(S, yield { A: block(L, l, j0, j1, 0, j0), B: LJt, m: b, k: j0, n: b });
    const { L: Ljj, dependent: dep } = choleskySmall(S, b, dependentPivot);
    for (const i of dep) dependent.push(j0 + i);
    for (let i = 0; i < b; i++) L.set(Ljj.subarray(i * b, i * b + i + 1), (j0 + i) * l + j0);
    if (below === 0) continue;
    // L[J⁺, J] = (G[J⁺, J] − L[J⁺, :j0]·L[J, :j0]ᵀ)·L[J, J]⁻ᵀ, J⁺ = rows after the block.
    const W = block(G, l, j1, l, j0, j1);
    if (LJt) subtract(W, yield { A: block(L, l, j1, l, 0, j0), B: LJt, m: below, k: j0, n: b });
    for (const i of dep) for (let r = 0; r < below; r++) W[r * b + i] = 0;
    const Lbelow = yield { A: W, B: transpose(invertLower(Ljj, b), b, b), m: below, k: b, n: b };
    for (let r = 0; r < below; r++) L.set(Lbelow.subarray(r * b, r * b + b), (j1 + r) * l + j0);
  }
  return { L, dependent };
}

/** Q = L⁻¹·X for lower-triangular L [l, l] and X [l, p], by block forward substitution. */
export function* solveLowerRows(L: Float64Array, X: Float64Array, l: number, p: number): Steps<Float64Array> {
  const Q = new Float64Array(l * p);
  for (let j0 = 0; j0 < l; j0 += NB) {
    const j1 = Math.min(l, j0 + NB);
    const b = j1 - j0;
    const R = X.slice(j0 * p, j1 * p);
    if (j0 > 0) subtract(R, yield { A: block(L, l, j0, j1, 0, j0), B: Q.slice(0, j0 * p), m: b, k: j0, n: p });
    Q.set(yield { A: invertLower(block(L, l, j0, j1, j0, j1), b), B: R, m: b, k: b, n: p }, j0 * p);
  }
  return Q;
}

/** Rows [r0, r1) × columns [c0, c1) of the row-major M [·, cols], as a new [r1−r0, c1−c0] array. */
function block(M: Float64Array, cols: number, r0: number, r1: number, c0: number, c1: number): Float64Array {
  const w = c1 - c0;
  const out = new Float64Array((r1 - r0) * w);
  for (let r = r0; r < r1; r++) out.set(M.subarray(r * cols + c0, r * cols + c1), (r - r0) * w);
  return out;
}

function subtract(X: Float64Array, Y: Float64Array): void {
  for (let i = 0; i < X.length; i++) X[i] -= Y[i];
}

/** Unblocked Cholesky of S [b, b] (lower L), dependent rows factored as removed (see choleskyBlocked). */
function choleskySmall(S: Float64Array, b: number, dependentPivot: number): { L: Float64Array; dependent: number[] } {
  const L = new Float64Array(b * b);
  const dependent: number[] = [];
  const removed = new Uint8Array(b);
  for (let i = 0; i < b; i++) {
    const ri = i * b;
    for (let j = 0; j < i; j++) {
      if (removed[j]) continue;
      const rj = j * b;
      let s = S[ri + j];
      for (let c = 0; c < j; c++) s -= L[ri + c] * L[rj + c];
      L[ri + j] = s / L[rj + j];
    }
    let d = S[ri + i];
    for (let c = 0; c < i; c++) d -= L[ri + c] * L[ri + c];
    if (d > dependentPivot) L[ri + i] = Math.sqrt(d);
    else {
      dependent.push(i);
      removed[i] = 1;
      L.fill(0, ri, ri + i);
      L[ri + i] = 1;
    }
  }
  return { L, dependent };
}

/** L⁻¹ of a lower-triangular L [l, l] (row-major), by columns of the identity. */
function invertLower(L: Float64Array, l: number): Float64Array {
  const M = new Float64Array(l * l);
  for (let i = 0; i < l; i++) {
    const ri = i * l;
    const inv = 1 / L[ri + i];
    M[ri + i] = inv;
    // Row i of M: M[i, j] = −(Σ_{c=j}^{i-1} L[i, c]·M[c, j]) / L[i, i] for j < i.
    for (let c = 0; c < i; c++) {
      const lic = L[ri + c];
      if (lic === 0) continue;
      const rc = c * l;
      for (let j = 0; j <= c; j++) M[ri + j] -= lic * M[rc + j];
    }
    for (let j = 0; j < i; j++) M[ri + j] *= inv;
  }
  return M;
}

function offOrthogonality(G: Float64Array, l: number): number {
  let worst = 0;
  for (let i = 0; i < l; i++) for (let j = 0; j < l; j++) worst = Math.max(worst, Math.abs(G[i * l + j] - (i === j ? 1 : 0)));
  return worst;
}

function randomUnitRow(X: Float64Array, j: number, p: number, normal: () => number): void {
  let s = 0;
  for (let i = 0; i < p; i++) {
    const v = normal();
    X[j * p + i] = v;
    s += v * v;
  }
  const inv = 1 / Math.sqrt(s);
  for (let i = 0; i < p; i++) X[j * p + i] *= inv;
}

/** Standard normal draws from mulberry32 (Box–Muller). */
export function gaussian(seed: number): () => number {
  const u = mulberry32(seed);
  return () => Math.sqrt(-2 * Math.log(Math.max(u(), 1e-300))) * Math.cos(2 * Math.PI * u());
}

/** The first k of descending values / vector rows Vt [≥k, p], with eigen.ts's sign rule (largest-magnitude entry positive). */
export function truncate(values: Float64Array, Vt: Float64Array, p: number, k: number): TruncatedEigen {
  const vectorsT = Vt.slice(0, k * p);
  for (let j = 0; j < k; j++) {
    const o = j * p;
    let best = 0;
    for (let i = 1; i < p; i++) if (Math.abs(vectorsT[o + i]) > Math.abs(vectorsT[o + best])) best = i;
    if (vectorsT[o + best] < 0) for (let i = 0; i < p; i++) vectorsT[o + i] = -vectorsT[o + i];
  }
  return { values: values.slice(0, k), vectors: transpose(vectorsT, k, p), vectorsT };
}
// Tested by test/fit/eigen-randomized.test.ts.

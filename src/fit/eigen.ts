/**
 * Symmetric eigendecomposition: Householder tridiagonalization + implicit QL
 * (tred2/tql2 of EISPACK via JAMA), on flat Float64Arrays.
 *
 * JAMA walks V by columns (V[k][j], k varying), which is strided in row-major storage.
 * Here the whole algorithm runs on W = Vᵀ, so every inner loop (Householder updates,
 * accumulation, and the QL Givens rotations on pairs of eigenvectors) is a contiguous row.
 * Eigenvectors come out as rows of W and are transposed once at the end.
 *
 * Measured on a shared 2-core box, Node 20: p=32 11 ms, p=256 75 ms, p=1024 3.2 s
 * (tred2 1.8 s + tql2 1.4 s; residual |Av - λv| ≤ 1e-12). ml-matrix's EVD: ~15 s at 1024.
 * A truncated (top-k) route was not taken: the DP may keep any component up to
 * k = budget/2 = 8p/ratio (static int2 costs 2 bits), i.e. all p components for ratios
 * ≤ 8, so the full spectrum is needed for the usual targets anyway.
 *
 * For p ≥ LARGE_EIGEN_MIN_P the calibration path (eigen-ort.ts symmetricEigenAsync) runs
 * eigenSteps instead: blocked Householder reduction without accumulation (panel updates as
 * dense products), divide and conquer on the tridiagonal (deflation + Gu–Eisenstat ẑ), and a
 * compact-WY blocked back-transform, with the dense products on ONNX Runtime float64 MatMul.
 * Same box, same run: p=384 239 → 75 ms, p=512 564 → 175 ms, p=1024 4.36 s → 0.91 s
 * (0.95 s with one ORT thread, as in the calibration workers; 2.2 s with the plain-JS GEMM);
 * residual |AV − VΛ|/‖A‖ ≤ 2.1e-15, |VᵀV − I| ≤ 8e-15. The sync symmetricEigen keeps
 * tred2/tql2 at every p.
 */
import { invariant } from '../errors.js';
import { gemmABt, transpose } from '../math/gemm.js';

export interface EigenResult {
  /** [p] eigenvalues, descending. */
  values: Float64Array;
  /** [p, p] row-major; column j is the unit eigenvector of values[j]. */
  vectors: Float64Array;
  /** [p, p] row-major; row j is the eigenvector of values[j] (= vectorsᵀ, contiguous per vector). */
  vectorsT: Float64Array;
}

/** Eigendecomposition of the symmetric A [p, p] (only read, never modified). */
export function symmetricEigen(A: Float64Array, p: number): EigenResult {
  invariant(A.length === p * p, `Error in symmetricEigen: A length (${A.length}) must be p*p (${p}*${p})`);
  const W = Float64Array.from(A); // symmetric, so W = Aᵀ = A
  const d = new Float64Array(p);
  const e = new Float64Array(p);
  if (p === 1) {
    return { values: Float64Array.of(A[0]), vectors: Float64Array.of(1), vectorsT: Float64Array.of(1) };
  }
  tred2(W, d, e, p);
  tql2(W, d, e, p);
  // tql2 leaves ascending order with eigenvectors as rows of W.
  return descendingResult(d, W, p);
}

/** EigenResult from ascending eigenvalues and their eigenvectors as rows: descending order, sign rule. */
function descendingResult(ascValues: Float64Array, ascRows: Float64Array, p: number): EigenResult {
  const values = new Float64Array(p);
  const vectorsT = new Float64Array(p * p);
  for (let j = 0; j < p; j++) {
    const src = p - 1 - j;
    values[j] = ascValues[src];
    vectorsT.set(ascRows.subarray(src * p, src * p + p), j * p);
  }
  fixSigns(vectorsT, p);
  return { values, vectors: transpose(vectorsT, p, p), vectorsT };
}

/** Fix signs deterministically: the largest-magnitude entry of each vector (row) is positive. */
function fixSigns(vectorsT: Float64Array, p: number): void {
  for (let j = 0; j < p; j++) {
    const o = j * p;
    let best = 0;
    for (let k = 1; k < p; k++) if (Math.abs(vectorsT[o + k]) > Math.abs(vectorsT[o + best])) best = k;
    if (vectorsT[o + best] < 0) for (let k = 0; k < p; k++) vectorsT[o + k] = -vectorsT[o + k];
  }
}

/**
 * Householder reduction to tridiagonal form (the first half of tred2), without accumulating.
 * Afterwards: diagonal of T at W[i*n+i]; e[i] = T(i, i-1) for i ≥ 1 (e[0] is scratch);
 * reflector i (i ≥ 1) is P_i = I - u uᵀ/h with u = W[i*n .. i*n+i) (zero past i-1) and h = d[i]
 * (h = 0: identity); A = P_{n-1}···P_1 · T · P_1···P_{n-1}.
 */
function tridiagonalize(W: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
  for (let j = 0; j < n; j++) d[j] = W[j * n + n - 1];
  for (let i = n - 1; i > 0; i--) {
    let scale = 0;
    let h = 0;
    for (let k = 0; k < i; k++) scale += Math.abs(d[k]);
    if (scale === 0) {
      e[i] = d[i - 1];
      for (let j = 0; j < i; j++) {
        d[j] = W[j * n + i - 1];
        W[j * n + i] = 0;
        W[i * n + j] = 0;
      }
    } else {
      h = householder(d, e, i, scale);
      let f: number;
      let g: number;
      for (let j = 0; j < i; j++) e[j] = 0;
      for (let j = 0; j < i; j++) {
        f = d[j];
        const rj = j * n;
        W[i * n + j] = f;
        g = e[j] + W[rj + j] * f;
        for (let k = j + 1; k <= i - 1; k++) {
          const w = W[rj + k];
          g += w * d[k];
          e[k] += w * f;
        }
        e[j] = g;
      }
      f = 0;
      for (let j = 0; j < i; j++) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const hh = f / (h + h);
      for (let j = 0; j < i; j++) e[j] -= hh * d[j];
      for (let j = 0; j < i; j++) {
        f = d[j];
        g = e[j];
        const rj = j * n;
        for (let k = j; k <= i - 1; k++) W[rj + k] -= f * e[k] + g * d[k];
        d[j] = W[rj + i - 1];
        W[rj + i] = 0;
      }
    }
    d[i] = h;
  }
}

const PANEL = 32;

/**
 * Blocked Householder reduction (LAPACK dsytrd/dlatrd style) on the full symmetric W [n, n]:
 * steps run in panels of PANEL reflectors; inside a panel each step's column and symmetric
 * product use the panel-start matrix plus the panel's rank-2 corrections, and the panel's
 * trailing update A -= U Qᵀ + Q Uᵀ is one dense product. The last ≤ 2·PANEL columns use the
 * unblocked tridiagonalize. Same outputs as tridiagonalize, up to rounding.
 */
function* tridiagonalizeBlocked(W: Float64Array, hOut: Float64Array, e: Float64Array, n: number): Generator<MatMulRequest, void, Float64Array> {
  const nb = PANEL;
  const U = new Float64Array(nb * n);
  const Q = new Float64Array(nb * n);
  const x = new Float64Array(n);
  const pv = new Float64Array(n);
  let i0 = n - 1;
  while (i0 + 1 > 2 * nb) {
    for (let t = 0; t < nb; t++) {
      const i = i0 - t;
      const ut = t * n;
      // Column i of the current matrix (rows < i) and its diagonal entry.
      let diag = W[i * n + i];
      for (let j = 0; j < i; j++) x[j] = W[i * n + j];
      for (let s = 0; s < t; s++) {
        const os = s * n;
        const a = Q[os + i];
        const c = U[os + i];
        diag -= 2 * c * a;
        for (let j = 0; j < i; j++) x[j] -= U[os + j] * a + Q[os + j] * c;
      }
      W[i * n + i] = diag;
      let scale = 0;
      for (let j = 0; j < i; j++) scale += Math.abs(x[j]);
      if (scale === 0) {
        e[i] = 0;
        hOut[i] = 0;
        for (let j = 0; j < i; j++) W[i * n + j] = 0;
        continue;
      }
      const h = householder(x, e, i, scale);
      hOut[i] = h;
      for (let j = 0; j < i; j++) {
        U[ut + j] = x[j];
        W[i * n + j] = x[j];
        pv[j] = 0;
      }
      // pv = B0 u on the leading i×i block (upper triangle), minus the panel's corrections.
      for (let j = 0; j < i; j++) {
        const f = x[j];
        const rj = j * n;
        let g = pv[j] + W[rj + j] * f;
        for (let k = j + 1; k < i; k++) {
          const w = W[rj + k];
          g += w * x[k];
          pv[k] += w * f;
        }
        pv[j] = g;
      }
      for (let s = 0; s < t; s++) {
        const os = s * n;
        let a = 0;
        let c = 0;
        for (let j = 0; j < i; j++) {
          a += Q[os + j] * x[j];
          c += U[os + j] * x[j];
        }
        for (let j = 0; j < i; j++) pv[j] -= U[os + j] * a + Q[os + j] * c;
      }
      let f = 0;
      for (let j = 0; j < i; j++) {
        pv[j] /= h;
        f += pv[j] * x[j];
      }
      const hh = f / (h + h);
      for (let j = 0; j < i; j++) Q[ut + j] = pv[j] - hh * x[j];
    }
    // Trailing update of the leading L×L block: A -= [U Q]·[Q U]ᵀ.
    const L = i0 - nb + 1;
    const M = new Float64Array(L * 2 * nb);
    const N = new Float64Array(2 * nb * L);
    for (let s = 0; s < nb; s++) {
      const os = s * n;
      for (let j = 0; j < L; j++) {
        M[j * 2 * nb + s] = U[os + j];
        M[j * 2 * nb + nb + s] = Q[os + j];
      }
      N.set(Q.subarray(os, os + L), s * L);
      N.set(U.subarray(os, os + L), (nb + s) * L);
    }
    const C = yield { A: M, B: N, m: L, k: 2 * nb, n: L };
    for (let j = 0; j < L; j++) {
      const rj = j * n;
      const cj = j * L;
      for (let k = 0; k < L; k++) W[rj + k] -= C[cj + k];
    }
    U.fill(0);
    Q.fill(0);
    i0 = L - 1;
  }
  // Tail: unblocked on the leading block.
  const L = i0 + 1;
  const Wt = new Float64Array(L * L);
  for (let j = 0; j < L; j++) Wt.set(W.subarray(j * n, j * n + L), j * L);
  const dt = new Float64Array(L);
  const et = new Float64Array(L);
  if (L >= 2) tridiagonalize(Wt, dt, et, L);
  for (let i = 0; i < L; i++) {
    if (i >= 1) {
      e[i] = et[i];
      hOut[i] = dt[i];
    }
    for (let j = 0; j <= i; j++) W[i * n + j] = Wt[i * L + j];
  }
}

/** Scales x[0..i) by 1/scale and turns it into the Householder vector u; sets e[i]; returns h = |u|²/2. */
function householder(x: Float64Array, e: Float64Array, i: number, scale: number): number {
  let h = 0;
  for (let k = 0; k < i; k++) {
    x[k] /= scale;
    h += x[k] * x[k];
  }
  const f = x[i - 1];
  let g = Math.sqrt(h);
  if (f > 0) g = -g;
  e[i] = scale * g;
  h -= f * g;
  x[i - 1] = f - g;
  return h;
}

/**
 * Householder reduction + accumulation (tred2). W holds Vᵀ (W[j*n+k] = V[k][j]).
 */
function tred2(W: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
  tridiagonalize(W, d, e, n);
  // Accumulate transformations.
  for (let i = 0; i < n - 1; i++) {
    W[i * n + n - 1] = W[i * n + i];
    W[i * n + i] = 1;
    const h = d[i + 1];
    const r1 = (i + 1) * n;
    if (h !== 0) {
      for (let k = 0; k <= i; k++) d[k] = W[r1 + k] / h;
      for (let j = 0; j <= i; j++) {
        const rj = j * n;
        let g = 0;
        for (let k = 0; k <= i; k++) g += W[r1 + k] * W[rj + k];
        for (let k = 0; k <= i; k++) W[rj + k] -= g * d[k];
      }
    }
    for (let k = 0; k <= i; k++) W[r1 + k] = 0;
  }
  for (let j = 0; j < n; j++) {
    d[j] = W[j * n + n - 1];
    W[j * n + n - 1] = 0;
  }
  W[(n - 1) * n + n - 1] = 1;
  e[0] = 0;
}

/** Symmetric tridiagonal QL with implicit shifts; rotations applied to rows of W. */
function tql2(W: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
  for (let i = 1; i < n; i++) e[i - 1] = e[i];
  e[n - 1] = 0;
  let f = 0;
  let tst1 = 0;
  const eps = 2 ** -52;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]) + Math.abs(e[l]));
    let m = l;
    while (m < n) {
      if (Math.abs(e[m]) <= eps * tst1) break;
      m++;
    }
    if (m > l) {
      let iter = 0;
      do {
        iter++;
        invariant(iter < 100, 'Error in symmetricEigen: QL iteration did not converge (matrix has NaN or Inf?)');
        let g = d[l];
        let p = (d[l + 1] - g) / (2 * e[l]);
        let r = hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const dl1 = d[l + 1];
        let h = g - d[l];
        for (let i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        p = d[m];
        let c = 1;
        let c2 = c;
        let c3 = c;
        const el1 = e[l + 1];
        let s = 0;
        let s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          const a = i * n;
          const b = a + n;
          for (let k = 0; k < n; k++) {
            const wb = W[b + k];
            const wa = W[a + k];
            W[b + k] = s * wa + c * wb;
            W[a + k] = c * wa - s * wb;
          }
        }
        p = (-s * s2 * c3 * el1 * e[l]) / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
  // Selection sort ascending (eigenvalues with their rows).
  for (let i = 0; i < n - 1; i++) {
    let k = i;
    let p = d[i];
    for (let j = i + 1; j < n; j++) {
      if (d[j] < p) {
        k = j;
        p = d[j];
      }
    }
    if (k !== i) {
      d[k] = d[i];
      d[i] = p;
      const a = i * n;
      const b = k * n;
      for (let j = 0; j < n; j++) {
        const t = W[a + j];
        W[a + j] = W[b + j];
        W[b + j] = t;
      }
    }
  }
}

function hypot(a: number, b: number): number {
  const x = Math.abs(a);
  const y = Math.abs(b);
  if (x > y) {
    const r = y / x;
    return x * Math.sqrt(1 + r * r);
  }
  if (y === 0) return 0;
  const r = x / y;
  return y * Math.sqrt(1 + r * r);
}

// ---------------------------------------------------------------------------------------------
// Large p: reduction without accumulation, divide-and-conquer on T, blocked back-transform.
// Written as a generator that yields its dense products, so the same code runs with plain-JS
// products (sync) or ONNX Runtime float64 MatMul (async, eigen-ort.ts).

/** A dense product request: C[m, n] = A[m, k] · B[k, n], row-major float64. */
export interface MatMulRequest { A: Float64Array; B: Float64Array; m: number; k: number; n: number }
export type EigenSteps = Generator<MatMulRequest, EigenResult, Float64Array>;

/** From here on symmetricEigen runs eigenSteps (reduction + divide and conquer + back-transform). */
export const LARGE_EIGEN_MIN_P = 384;
const DC_LEAF = 32;
const BACK_BLOCK = 64;
const EPS = 2 ** -52;

/** Eigendecomposition of the symmetric A [p, p] (p ≥ 2) as steps; same contract as symmetricEigen. */
export function* eigenSteps(A: Float64Array, p: number): EigenSteps {
  invariant(A.length === p * p && p >= 2, `Error in symmetricEigen: A length (${A.length}) must be p*p (${p}*${p}), p ≥ 2`);
  const W = Float64Array.from(A);
  const h = new Float64Array(p);
  const e = new Float64Array(p);
  yield* tridiagonalizeBlocked(W, h, e, p);
  e[0] = 0;
  const diag = new Float64Array(p);
  for (let i = 0; i < p; i++) diag[i] = W[i * p + i];
  const { lam, ZT } = yield* dcSteps(diag, e, p);
  // Z [p, p]: column j = eigenvector j of T (ascending). Back-transform X = P_{n-1}···P_1 Z.
  const Z = transpose(ZT, p, p);
  for (let k0 = 1; k0 < p; k0 += BACK_BLOCK) {
    const k1 = Math.min(p, k0 + BACK_BLOCK);
    const b = k1 - k0;
    // Block product P_{k1-1}···P_{k0} = I - V T Vᵀ, V column c = u_{k1-1-c} (rows 0..k1), τ = 1/h.
    const Vt = new Float64Array(b * k1); // [b, k1] = Vᵀ
    const tau = new Float64Array(b);
    for (let c = 0; c < b; c++) {
      const i = k1 - 1 - c;
      if (h[i] !== 0) {
        tau[c] = 1 / h[i];
        Vt.set(W.subarray(i * p, i * p + i), c * k1);
      }
    }
    // T upper triangular (LAPACK dlarft, forward, columnwise) from the Gram matrix G = VᵀV.
    const G = gemmABt(Vt, Vt, new Float64Array(b * b), b, b, k1, { upper: true });
    const T = new Float64Array(b * b);
    for (let c = 0; c < b; c++) {
      T[c * b + c] = tau[c];
      if (tau[c] === 0) continue;
      for (let r = 0; r < c; r++) {
        let acc = 0;
        for (let s = r; s < c; s++) acc += T[r * b + s] * G[s * b + c];
        T[r * b + c] = -tau[c] * acc;
      }
    }
    // VT = V·T as rows of its transpose: row c of (VT)ᵀ = Σ_{s ≤ c} T[s, c]·Vᵀ[s, :].
    const VTt = new Float64Array(b * k1);
    for (let c = 0; c < b; c++) {
      const o = c * k1;
      for (let s = 0; s <= c; s++) {
        const t = T[s * b + c];
        if (t === 0) continue;
        const os = s * k1;
        for (let q = 0; q < k1; q++) VTt[o + q] += t * Vt[os + q];
      }
    }
    const Zs = Z.subarray(0, k1 * p); // rows 0..k1 of Z, contiguous
    const X = yield { A: Vt, B: Zs, m: b, k: k1, n: p }; // Vᵀ Zs [b, p]
    const Y = yield { A: transpose(VTt, b, k1), B: X, m: k1, k: b, n: p }; // V T Vᵀ Zs [k1, p]
    for (let q = 0; q < k1 * p; q++) Zs[q] -= Y[q];
  }
  // Z's columns are the eigenvectors of lam (ascending).
  return descendingResult(lam, transpose(Z, p, p), p);
}

/**
 * Divide and conquer for the symmetric tridiagonal T (Cuppen; deflation and the
 * Gu–Eisenstat recomputed ẑ keep the eigenvectors orthogonal). d diagonal, e[i] = T(i, i-1)
 * for i ≥ 1 (e[0] ignored). Returns ascending values and ZT (row j = eigenvector j).
 */
function* dcSteps(d0: Float64Array, e0: Float64Array, n: number): Generator<MatMulRequest, { lam: Float64Array; ZT: Float64Array }, Float64Array> {
  if (n <= DC_LEAF) {
    const W = new Float64Array(n * n);
    for (let i = 0; i < n; i++) W[i * n + i] = 1;
    const d = Float64Array.from(d0);
    const e = Float64Array.from(e0);
    tql2(W, d, e, n);
    return { lam: d, ZT: W };
  }
  const m = n >> 1;
  const n2 = n - m;
  const beta = e0[m];
  const d1 = d0.slice(0, m);
  const e1 = e0.slice(0, m);
  d1[m - 1] -= beta;
  const d2 = d0.slice(m);
  const e2 = e0.slice(m);
  d2[0] -= beta;
  e2[0] = 0;
  const A = yield* dcSteps(d1, e1, m);
  const B = yield* dcSteps(d2, e2, n2);
  // T = diag(T1, T2) + beta·v vᵀ, v = (e_m-1; e_m); in the eigenbasis: D + rho z zᵀ.
  const QT = new Float64Array(n * n);
  for (let j = 0; j < m; j++) QT.set(A.ZT.subarray(j * m, j * m + m), j * n);
  for (let j = 0; j < n2; j++) QT.set(B.ZT.subarray(j * n2, j * n2 + n2), (m + j) * n + m);
  const D = new Float64Array(n);
  const z = new Float64Array(n);
  for (let j = 0; j < m; j++) { D[j] = A.lam[j]; z[j] = A.ZT[j * m + m - 1] / Math.SQRT2; }
  for (let j = 0; j < n2; j++) { D[m + j] = B.lam[j]; z[m + j] = B.ZT[j * n2] / Math.SQRT2; }
  let rho = 2 * beta;
  const flip = rho < 0;
  if (flip) {
    for (let j = 0; j < n; j++) D[j] = -D[j];
    rho = -rho;
  }
  const perm = Array.from({ length: n }, (_, i) => i).sort((a, b) => D[a] - D[b]);
  let dmax = 0;
  let zmax = 0;
  for (let j = 0; j < n; j++) { dmax = Math.max(dmax, Math.abs(D[j])); zmax = Math.max(zmax, Math.abs(z[j])); }
  const tol = 8 * EPS * Math.max(dmax, rho * zmax);
  const keep: number[] = [];
  const defl: number[] = [];
  let pj = -1;
  for (const nj of perm) {
    if (rho * Math.abs(z[nj]) <= tol) { defl.push(nj); continue; }
    if (pj >= 0) {
      let s = z[pj];
      let c = z[nj];
      const tau = Math.hypot(c, s);
      const t = D[nj] - D[pj];
      c /= tau;
      s = -s / tau;
      if (Math.abs(t * c * s) <= tol) {
        // Near-equal D: a Givens rotation zeroes z[pj], which then deflates.
        z[nj] = tau;
        z[pj] = 0;
        const a = pj * n;
        const b = nj * n;
        for (let i = 0; i < n; i++) { const x = QT[a + i]; const y = QT[b + i]; QT[a + i] = c * x + s * y; QT[b + i] = c * y - s * x; }
        const tt = D[pj] * c * c + D[nj] * s * s;
        D[nj] = D[pj] * s * s + D[nj] * c * c;
        D[pj] = tt;
        defl.push(pj);
        pj = nj;
        continue;
      }
      keep.push(pj);
    }
    pj = nj;
  }
  if (pj >= 0) keep.push(pj);
  keep.sort((a, b) => D[a] - D[b]);
  const k = keep.length;
  const dl = Float64Array.from(keep, (i) => D[i]);
  const zl = Float64Array.from(keep, (i) => z[i]);
  let zn2 = 0;
  for (let i = 0; i < k; i++) zn2 += zl[i] * zl[i];
  const Delta = new Float64Array(k * k); // Delta[i*k+j] = dl[j] - lam_i, computed relative to the nearer pole
  const lamk = new Float64Array(k);
  const secular = (o: number, tau: number): number => {
    let s = 1;
    for (let j = 0; j < k; j++) s += (rho * zl[j] * zl[j]) / ((dl[j] - dl[o]) - tau);
    return s;
  };
  for (let i = 0; i < k; i++) {
    let o: number;
    let lo: number;
    let hi: number;
    if (i < k - 1) {
      const gap = dl[i + 1] - dl[i];
      if (secular(i, gap / 2) >= 0) { o = i; lo = 0; hi = gap / 2; } else { o = i + 1; lo = -gap / 2; hi = 0; }
    } else { o = i; lo = 0; hi = rho * zn2; }
    let tau = (lo + hi) / 2;
    for (let it = 0; it < 200; it++) {
      let s = 1;
      let ds = 0;
      for (let j = 0; j < k; j++) {
        const del = (dl[j] - dl[o]) - tau;
        const w = (rho * zl[j] * zl[j]) / del;
        s += w;
        ds += w / del;
      }
      if (s > 0) hi = tau; else if (s < 0) lo = tau; else break;
      let nt = tau - s / ds;
      if (!(nt > lo && nt < hi)) nt = (lo + hi) / 2;
      if (hi - lo <= 2 * EPS * Math.max(Math.abs(lo), Math.abs(hi)) || nt === tau) break;
      tau = nt;
    }
    lamk[i] = dl[o] + tau;
    for (let j = 0; j < k; j++) Delta[i * k + j] = (dl[j] - dl[o]) - tau;
  }
  // Gu–Eisenstat: ẑ from the computed roots, so the vectors below are orthogonal.
  const zh = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    let w = -Delta[j * k + j] / rho;
    for (let i = 0; i < k; i++) if (i !== j) w *= -Delta[i * k + j] / (dl[i] - dl[j]);
    zh[j] = Math.sign(zl[j]) * Math.sqrt(Math.abs(w));
  }
  const UT = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    let s = 0;
    for (let j = 0; j < k; j++) { const u = zh[j] / Delta[i * k + j]; UT[i * k + j] = u; s += u * u; }
    s = 1 / Math.sqrt(s);
    for (let j = 0; j < k; j++) UT[i * k + j] *= s;
  }
  const QK = new Float64Array(k * n);
  keep.forEach((r, i) => QK.set(QT.subarray(r * n, r * n + n), i * n));
  const VK = k > 0 ? yield { A: UT, B: QK, m: k, k, n } : new Float64Array(0);
  const all: { v: number; src: Float64Array; off: number }[] = [];
  for (let i = 0; i < k; i++) all.push({ v: flip ? -lamk[i] : lamk[i], src: VK, off: i * n });
  for (const r of defl) all.push({ v: flip ? -D[r] : D[r], src: QT, off: r * n });
  all.sort((a, b) => a.v - b.v);
  const lam = new Float64Array(n);
  const ZT = new Float64Array(n * n);
  all.forEach((x, j) => { lam[j] = x.v; ZT.set(x.src.subarray(x.off, x.off + n), j * n); });
  return { lam, ZT };
}

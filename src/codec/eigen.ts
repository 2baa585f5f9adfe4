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
 */
import { invariant } from '../errors.js';
import { transpose } from './gemm.js';

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
  // tql2 leaves ascending order; reverse rows for descending.
  const values = new Float64Array(p);
  const vectorsT = new Float64Array(p * p);
  for (let j = 0; j < p; j++) {
    const src = p - 1 - j;
    values[j] = d[src];
    vectorsT.set(W.subarray(src * p, src * p + p), j * p);
  }
  // Fix signs deterministically: the largest-magnitude entry of each vector is positive.
  for (let j = 0; j < p; j++) {
    const o = j * p;
    let best = 0;
    for (let k = 1; k < p; k++) if (Math.abs(vectorsT[o + k]) > Math.abs(vectorsT[o + best])) best = k;
    if (vectorsT[o + best] < 0) for (let k = 0; k < p; k++) vectorsT[o + k] = -vectorsT[o + k];
  }
  return { values, vectors: transpose(vectorsT, p, p), vectorsT };
}

/** Householder reduction to tridiagonal form; W holds Vᵀ (W[j*n+k] = V[k][j]). */
function tred2(W: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
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
      for (let k = 0; k < i; k++) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      let f = d[i - 1];
      let g = Math.sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
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

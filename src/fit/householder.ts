// Tested by test/fit/eigen.test.ts.
/**
 * Householder reduction of a symmetric matrix to tridiagonal form: unblocked (tridiagonalize,
 * and tred2 which also accumulates the reflectors) and blocked (tridiagonalizeBlocked, whose
 * panel products are yielded as MatMulRequests). Part of symmetricEigen (eigen.ts).
 */
import type { MatMulRequest } from './eigen-types.js';

/**
 * Householder reduction to tridiagonal form (the first half of tred2), without accumulating.
 * Afterwards: diagonal of T at W[i*n+i]; e[i] = T(i, i-1) for i ≥ 1 (e[0] is scratch);
 * reflector i (i ≥ 1) is P_i = I - u uᵀ/h with u = W[i*n .. i*n+i) (zero past i-1) and h = d[i]
 * (h = 0: identity); A = P_{n-1}···P_1 · T · P_1···P_{n-1}.
 */
export function tridiagonalize(W: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
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
export function* tridiagonalizeBlocked(
  W: Float64Array,
  hOut: Float64Array,
  e: Float64Array,
  n: number,
  onWork?: (done: number, total: number) => void,
): Generator<MatMulRequest, void, Float64Array> {
  // Reducing the leading L×L block costs (4/3)·L³ operations: what is left after each panel.
  const total = reductionFlops(n);
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
      symmetricUpperProduct(W, n, x, pv, i);
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
    onWork?.(total - reductionFlops(L), total);
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
  onWork?.(total, total);
}

/** Operations of the Householder reduction of an n×n symmetric matrix to tridiagonal form, (4/3)·n³. */
export function reductionFlops(n: number): number {
  return (4 / 3) * n ** 3;
}

/**
 * pv[0..i) += B x[0..i) for the symmetric leading i×i block B of W [·, n], reading only its upper
 * triangle (each entry once: a dot product along the row and a scatter down the column). Rows go
 * four at a time so one pass over x and pv serves four rows, the hot loop of the reduction
 * (half its work: docs/benchmarks.md, "Calibration kernels").
 */
export function symmetricUpperProduct(W: Float64Array, n: number, x: Float64Array, pv: Float64Array, i: number): void {
  let j0 = 0;
  for (; j0 + 4 <= i; j0 += 4) {
    const j1 = j0 + 4;
    // The 4×4 diagonal block, one row at a time.
    upperRows(W, n, x, pv, j0, j1, j1);
    // Columns right of it, four rows per pass.
    const r0 = j0 * n;
    const r1 = r0 + n;
    const r2 = r1 + n;
    const r3 = r2 + n;
    const f0 = x[j0];
    const f1 = x[j0 + 1];
    const f2 = x[j0 + 2];
    const f3 = x[j0 + 3];
    let g0 = 0;
    let g1 = 0;
    let g2 = 0;
    let g3 = 0;
    for (let k = j1; k < i; k++) {
      const w0 = W[r0 + k];
      const w1 = W[r1 + k];
      const w2 = W[r2 + k];
      const w3 = W[r3 + k];
      const xk = x[k];
      g0 += w0 * xk;
      g1 += w1 * xk;
      g2 += w2 * xk;
      g3 += w3 * xk;
      pv[k] += w0 * f0 + w1 * f1 + w2 * f2 + w3 * f3;
    }
    pv[j0] += g0;
    pv[j0 + 1] += g1;
    pv[j0 + 2] += g2;
    pv[j0 + 3] += g3;
  }
  upperRows(W, n, x, pv, j0, i, i);
}

/** Rows [from, to) of symmetricUpperProduct one at a time, over their upper-triangle columns < end. */
function upperRows(W: Float64Array, n: number, x: Float64Array, pv: Float64Array, from: number, to: number, end: number): void {
  for (let j = from; j < to; j++) {
    const f = x[j];
    const rj = j * n;
    let g = pv[j] + W[rj + j] * f;
    for (let k = j + 1; k < end; k++) {
      const w = W[rj + k];
      g += w * x[k];
      pv[k] += w * f;
    }
    pv[j] = g;
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
export function tred2(W: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
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

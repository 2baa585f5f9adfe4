// Tested by test/fit/eigen.test.ts and test/fit/covariance.test.ts.
/**
 * Plain-JS dense products on float64, tiled 4x4 in registers with contiguous inner loops
 * (the layout V8 optimizes best). Used where ONNX Runtime is not worth a session.
 */
import { invariant } from '../errors.js';

/**
 * C[m, n] (+)= A[m, k] · B[n, k]ᵀ, all row-major float64 (NumPy: C += A @ B.T).
 * With `upper`, only entries with j >= i are computed (for symmetric A·Aᵀ).
 */
export function gemmABt(
  A: Float64Array,
  B: Float64Array,
  C: Float64Array,
  m: number,
  n: number,
  k: number,
  opts: { accumulate?: boolean; upper?: boolean } = {},
): Float64Array {
  invariant(
    A.length >= m * k && B.length >= n * k && C.length >= m * n,
    `Error in gemmABt: shapes A[${m},${k}] B[${n},${k}] C[${m},${n}] do not fit the arrays`,
  );
  if (!opts.accumulate) C.fill(0, 0, m * n);
  const upper = opts.upper === true;
  const JB = 64; // rows of B kept hot in cache while sweeping A
  for (let j0 = 0; j0 < n; j0 += JB) {
    const j1 = Math.min(n, j0 + JB);
    for (let i = 0; i < m; i += 4) {
      const ie = Math.min(m, i + 4);
      let jStart = j0;
      if (upper) {
        if (i >= j1) continue;
        jStart = Math.max(j0, i - (i % 4));
      }
      for (let j = jStart; j < j1; j += 4) {
        const je = Math.min(j1, j + 4);
        if (ie - i === 4 && je - j === 4) tile44(A, B, C, i, j, n, k);
        else tileEdge(A, B, C, i, ie, j, je, n, k);
      }
    }
  }
  return C;
}

function tile44(A: Float64Array, B: Float64Array, C: Float64Array, i: number, j: number, n: number, k: number): void {
  const a0 = i * k,
    a1 = a0 + k,
    a2 = a1 + k,
    a3 = a2 + k;
  const b0 = j * k,
    b1 = b0 + k,
    b2 = b1 + k,
    b3 = b2 + k;
  let c00 = 0,
    c01 = 0,
    c02 = 0,
    c03 = 0;
  let c10 = 0,
    c11 = 0,
    c12 = 0,
    c13 = 0;
  let c20 = 0,
    c21 = 0,
    c22 = 0,
    c23 = 0;
  let c30 = 0,
    c31 = 0,
    c32 = 0,
    c33 = 0;
  for (let q = 0; q < k; q++) {
    const x0 = A[a0 + q],
      x1 = A[a1 + q],
      x2 = A[a2 + q],
      x3 = A[a3 + q];
    const y0 = B[b0 + q],
      y1 = B[b1 + q],
      y2 = B[b2 + q],
      y3 = B[b3 + q];
    c00 += x0 * y0;
    c01 += x0 * y1;
    c02 += x0 * y2;
    c03 += x0 * y3;
    c10 += x1 * y0;
    c11 += x1 * y1;
    c12 += x1 * y2;
    c13 += x1 * y3;
    c20 += x2 * y0;
    c21 += x2 * y1;
    c22 += x2 * y2;
    c23 += x2 * y3;
    c30 += x3 * y0;
    c31 += x3 * y1;
    c32 += x3 * y2;
    c33 += x3 * y3;
  }
  let o = i * n + j;
  C[o] += c00;
  C[o + 1] += c01;
  C[o + 2] += c02;
  C[o + 3] += c03;
  o += n;
  C[o] += c10;
  C[o + 1] += c11;
  C[o + 2] += c12;
  C[o + 3] += c13;
  o += n;
  C[o] += c20;
  C[o + 1] += c21;
  C[o + 2] += c22;
  C[o + 3] += c23;
  o += n;
  C[o] += c30;
  C[o + 1] += c31;
  C[o + 2] += c32;
  C[o + 3] += c33;
}

function tileEdge(
  A: Float64Array,
  B: Float64Array,
  C: Float64Array,
  i0: number,
  i1: number,
  j0: number,
  j1: number,
  n: number,
  k: number,
): void {
  for (let i = i0; i < i1; i++) {
    for (let j = j0; j < j1; j++) {
      let s = 0;
      const a = i * k,
        b = j * k;
      for (let q = 0; q < k; q++) s += A[a + q] * B[b + q];
      C[i * n + j] += s;
    }
  }
}

/** Row-major transpose: out[c, r] = X[r, c] for X [rows, cols]. */
export function transpose(X: Float64Array, rows: number, cols: number, out = new Float64Array(rows * cols)): Float64Array {
  const T = 32;
  for (let r0 = 0; r0 < rows; r0 += T) {
    const r1 = Math.min(rows, r0 + T);
    for (let c0 = 0; c0 < cols; c0 += T) {
      const c1 = Math.min(cols, c0 + T);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * rows + r] = X[r * cols + c];
    }
  }
  return out;
}

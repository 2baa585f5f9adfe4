// Tested by test/fit/eigen.test.ts.
// Large p: reduction without accumulation, divide-and-conquer on T, blocked back-transform.
// Written as a generator that yields its dense products, so the same code runs with plain-JS
// products (test/fit/eigen-reference.ts) or ONNX Runtime float64 MatMul (eigen-ort.ts).
import { invariant } from '../errors.js';
import { gemmABt, transpose } from '../math/gemm.js';
import { dcSteps } from './divide-conquer.js';
import { descendingResult } from './eigen.js';
import type { EigenSteps, EigenWork } from './eigen-types.js';
import { tridiagonalizeBlocked } from './householder.js';

export { LARGE_EIGEN_MIN_P } from './ort-thresholds.js';

const BACK_BLOCK = 64;

/**
 * Eigendecomposition of the symmetric A [p, p] (p ≥ 2) as steps; same contract as symmetricEigen.
 * `onWork` hears its phases: the Householder reduction and the back-transform with their
 * operations done, divide and conquer without a count.
 */
export function* eigenSteps(A: Float64Array, p: number, onWork?: EigenWork): EigenSteps {
  invariant(A.length === p * p && p >= 2, `Error in symmetricEigen: A length (${A.length}) must be p*p (${p}*${p}), p ≥ 2`);
  const W = Float64Array.from(A);
  const h = new Float64Array(p);
  const e = new Float64Array(p);
  yield* tridiagonalizeBlocked(W, h, e, p, onWork && ((done, total) => onWork('Householder reduction', done, total)));
  e[0] = 0;
  const diag = new Float64Array(p);
  for (let i = 0; i < p; i++) diag[i] = W[i * p + i];
  onWork?.('divide and conquer', 0, 0);
  const { lam, ZT } = yield* dcSteps(diag, e, p);
  // The back-transform: two products of 2·b·k1·p operations per block.
  let backTotal = 0;
  for (let k0 = 1; k0 < p; k0 += BACK_BLOCK) backTotal += 4 * (Math.min(p, k0 + BACK_BLOCK) - k0) * Math.min(p, k0 + BACK_BLOCK) * p;
  let backDone = 0;
  onWork?.('back-transform', 0, backTotal);
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
    backDone += 4 * b * k1 * p;
    onWork?.('back-transform', backDone, backTotal);
  }
  // Z's columns are the eigenvectors of lam (ascending).
  return descendingResult(lam, transpose(Z, p, p), p);
}

// Test-only references (issue 14): the large-p eigen steps run with plain-JS products
// (calibration runs them on ONNX Runtime, src/fit/eigen-ort.ts).
import type { EigenResult, EigenSteps, MatMulRequest } from '../../src/fit/eigen.js';
import { gemmABt, transpose } from '../../src/math/gemm.js';

/** Plain-JS C = A·B via the tiled gemmABt. */
export function jsMatMul({ A, B, m, k, n }: MatMulRequest): Float64Array {
  return gemmABt(A, transpose(B, k, n), new Float64Array(m * n), m, n, k);
}

/** Runs the large-p steps with plain-JS products. */
export function runEigenSteps(steps: EigenSteps, mm: (r: MatMulRequest) => Float64Array = jsMatMul): EigenResult {
  let r = steps.next(new Float64Array(0));
  while (!r.done) r = steps.next(mm(r.value));
  return r.value;
}

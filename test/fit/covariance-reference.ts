// Test-only reference (issue 14): the textbook two-pass covariance the streaming accumulator is checked against.
import type { CovarianceResult } from '../../src/fit/covariance.js';

/** Two-pass float64 reference (tests and small inputs): X [tokens, p]. */
export function covarianceTwoPass(X: Float32Array, tokens: number, p: number): CovarianceResult {
  const mean = new Float64Array(p);
  for (let t = 0; t < tokens; t++) for (let i = 0; i < p; i++) mean[i] += X[t * p + i];
  for (let i = 0; i < p; i++) mean[i] /= tokens;
  const cov = new Float64Array(p * p);
  const y = new Float64Array(p);
  for (let t = 0; t < tokens; t++) {
    for (let i = 0; i < p; i++) y[i] = X[t * p + i] - mean[i];
    for (let i = 0; i < p; i++) {
      const yi = y[i];
      for (let j = i; j < p; j++) cov[i * p + j] += yi * y[j];
    }
  }
  for (let i = 0; i < p; i++) {
    for (let j = i; j < p; j++) {
      cov[i * p + j] /= tokens;
      cov[j * p + i] = cov[i * p + j];
    }
  }
  return { mean, cov, count: tokens };
}

// Tested by test/fit/eigen.test.ts.
/** The contract every eigen algorithm in src/fit/ shares (types only: the algorithm files import it instead of one another). */

export interface EigenResult {
  /** [p] eigenvalues, descending. */
  values: Float64Array;
  /** [p, p] row-major; column j is the unit eigenvector of values[j]. */
  vectors: Float64Array;
  /** [p, p] row-major; row j is the eigenvector of values[j] (= vectorsᵀ, contiguous per vector). */
  vectorsT: Float64Array;
}

/** A dense product request: C[m, n] = A[m, k] · B[k, n], row-major float64. */
export interface MatMulRequest {
  A: Float64Array;
  B: Float64Array;
  m: number;
  k: number;
  n: number;
}
/**
 * Progress of a long eigensolve: the phase running now and the floating-point operations done of
 * its `total` (counted from its loops' sizes; total 0 where a phase has no count). A lone
 * two-level block at a large --two-level-rank takes minutes (calibrate shows these with an ETA).
 */
export type EigenWork = (phase: string, done: number, total: number) => void;

/** An eigen algorithm as a generator: it yields the dense products it needs and returns the result. */
export type EigenSteps = Generator<MatMulRequest, EigenResult, Float64Array>;

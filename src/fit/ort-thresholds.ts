// Tested by test/fit/eigen.test.ts and test/fit/covariance.test.ts.
/**
 * Where calibration's dense linear algebra switches from plain JS to ONNX Runtime: the one home
 * of these thresholds (measured on a shared 2-core box, docs/benchmarks.md).
 */

/** From this p on the covariance's Gram products run on ONNX Runtime's Gemm (OrtGramKernel): the call overhead has vanished. */
export const ORT_GRAM_MIN_P = 128;

/** From this p on the eigendecomposition runs eigenSteps with its dense products on ONNX Runtime (eigen-ort.ts); below, tred2/tql2 in JS. */
export const LARGE_EIGEN_MIN_P = 384;

/**
 * From this p on a basis whose plans store at most k < p components (FitJob.maxRank) is fitted
 * by the truncated randomized solver (eigen-randomized.ts) instead of the dense eigensolve:
 * measured side by side (scripts/eigen-randomized-bench.ts), randomized wins from p = 384 at
 * both k = 0.4p (2.0x) and k = 0.1p (18x); at p = 256 it is even at k = 0.4p (1.1x). It equals
 * LARGE_EIGEN_MIN_P, where its products move to ONNX Runtime too.
 */
export const RANDOMIZED_EIGEN_MIN_P = 384;

/** Below this p every basis fit runs inline (fit-pool.ts): a worker's start-up costs more than the fit. */
export const FIT_WORKER_MIN_P = 128;

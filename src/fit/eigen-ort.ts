// Tested by test/fit/eigen.test.ts.
/**
 * symmetricEigenAsync: the large-p eigensolver (eigen-steps.ts eigenSteps: reduction, divide
 * and conquer, blocked back-transform) with its dense products on an ONNX Runtime float64
 * MatMul (timings: docs/benchmarks.md, "Calibration kernels"). Below LARGE_EIGEN_MIN_P it is
 * exactly symmetricEigen.
 */
import { EXTERNAL_EIGEN_MIN_P, pythonEigen, type ExternalEigen } from './eigen-python.js';
import { GraphBuilder } from '../onnx/builder.js';
import { createSession, type Device, ort } from '../onnx/session.js';
import { type EigenResult, type MatMulRequest, symmetricEigen } from './eigen.js';
import type { EigenWork } from './eigen-types.js';
import { eigenSteps } from './eigen-steps.js';
import { LARGE_EIGEN_MIN_P } from './ort-thresholds.js';

const sessions = new Map<string, Promise<ort.InferenceSession>>();

/** One cached float64 MatMul session per provider and thread count (dynamic shapes). */
function matMulSession(threads: number, device: Device): Promise<ort.InferenceSession> {
  const key = `${device}/${threads}`;
  let s = sessions.get(key);
  if (!s) {
    const g = new GraphBuilder('eigen_matmul');
    const a = g.input('a', 'float64', ['m', 'k']);
    const b = g.input('b', 'float64', ['k', 'n']);
    g.output(g.op('MatMul', [a, b]), 'c', 'float64', ['m', 'n']);
    s = createSession(g.toModel(), { threads, device });
    s.catch(() => sessions.delete(key));
    sessions.set(key, s);
  }
  return s;
}

async function ortMatMul(session: ort.InferenceSession, { A, B, m, k, n }: MatMulRequest): Promise<Float64Array> {
  // ORT reads the whole backing buffer of a view, so pass exact-size arrays.
  const a = A.length === m * k && A.byteOffset === 0 && A.buffer.byteLength === A.byteLength ? A : A.slice(0, m * k);
  const b = B.length === k * n && B.byteOffset === 0 && B.buffer.byteLength === B.byteLength ? B : B.slice(0, k * n);
  const out = await session.run({ a: new ort.Tensor('float64', a, [m, k]), b: new ort.Tensor('float64', b, [k, n]) });
  const c = out.c.data as Float64Array;
  out.c.dispose?.();
  return c;
}

/**
 * Where the dense products run: ONNX Runtime's `threads` intra-op threads (0 = all cores) on
 * `device` (default the CPU; 'cuda' puts the float64 MatMul on the GPU, calibrate --device cuda).
 */
export interface OrtProducts {
  threads?: number;
  device?: Device;
  /** The dense eigensolver outside Node (eigen-python.ts), for p ≥ EXTERNAL_EIGEN_MIN_P; absent: kvtc's own. */
  external?: ExternalEigen;
}

/**
 * Same contract as symmetricEigen (values descending, sign rule, orthonormal vectors); for
 * p ≥ LARGE_EIGEN_MIN_P the products run on ONNX Runtime. `threads`: ORT intra-op threads
 * (0 = all cores; pass 1 where the caller already runs one job per core).
 */
export async function symmetricEigenAsync(
  A: Float64Array,
  p: number,
  opts: OrtProducts & { onWork?: EigenWork } = {},
): Promise<EigenResult> {
  if (opts.external && p >= EXTERNAL_EIGEN_MIN_P) {
    opts.onWork?.(`dense eigensolve (${opts.external.version})`, 0, 0);
    return pythonEigen(A, p, opts.external, opts.threads ?? 0);
  }
  if (p < LARGE_EIGEN_MIN_P) return symmetricEigen(A, p);
  return runStepsOnOrt(eigenSteps(A, p, opts.onWork), opts.threads ?? 0, opts.device);
}

/** Runs a generator of dense products (eigen-types.ts MatMulRequest) with every product on ONNX Runtime. */
export async function runStepsOnOrt<T>(
  steps: Generator<MatMulRequest, T, Float64Array>,
  threads: number,
  device: Device = 'cpu',
): Promise<T> {
  const session = await matMulSession(threads, device);
  let r = steps.next(new Float64Array(0));
  while (!r.done) r = steps.next(await ortMatMul(session, r.value));
  return r.value;
}

/** C = A·B: Float64Array // [m, n] from A [m, k] and B [k, n], row-major, on ONNX Runtime float64 MatMul. */
export async function matMulAsync(
  A: Float64Array,
  B: Float64Array,
  m: number,
  k: number,
  n: number,
  threads = 0,
  device: Device = 'cpu',
): Promise<Float64Array> {
  return ortMatMul(await matMulSession(threads, device), { A, B, m, k, n });
}

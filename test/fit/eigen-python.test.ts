// The external dense eigensolver (src/fit/eigen-python.ts, src/fit/eigh.py): NumPy's and torch's
// eigh in a child Python against kvtc's own solver on the same matrix, the way calibrate picks
// it, and what a user sees when that Python or its library is missing or the matrix is bad.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { symmetricEigenAsync } from '../../src/fit/eigen-ort.js';
import {
  describeEigensolver,
  EXTERNAL_EIGEN_MIN_P,
  pythonEigen,
  resolveEigensolver,
  type ExternalEigen,
} from '../../src/fit/eigen-python.js';
import { blockEigen, blockSolver, fitSolver } from '../../src/calibrate/fit-pool.js';
import { eigensolverFor } from '../../src/calibrate/calibrate.js';
import { rng } from '../codec/rng.js';

/** Symmetric, eigenvalues about 1, 2, …, p (gaps of 1 ≫ the coupling): every eigenvector well defined. */
function separated(p: number, seed: number): Float64Array {
  const { normal } = rng(seed);
  const A = new Float64Array(p * p);
  for (let i = 0; i < p; i++)
    for (let j = 0; j <= i; j++) {
      const v = i === j ? p - i : 0.02 * normal();
      A[i * p + j] = v;
      A[j * p + i] = v;
    }
  return A;
}

const has = (code: string) => spawnSync('python3', ['-c', code], { stdio: 'ignore' }).status === 0;
const numpy = has('import numpy');
const torch = has('import torch');
const cuda = torch && has('import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)');

function maxDiff(a: Float64Array, b: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe.runIf(numpy)('the external eigensolver', () => {
  const p = EXTERNAL_EIGEN_MIN_P + 32;
  const A = separated(p, 7);

  it.each([['numpy'], ...(torch ? [['torch']] : [])] as const)(
    '%s gives what kvtc’s own solver gives: the same values, the same vectors under the same sign rule',
    async (backend) => {
      const ext = resolveEigensolver(backend, 'cpu')!;
      expect(ext).toMatchObject({ python: 'python3', backend, device: 'cpu' });
      expect(describeEigensolver(ext)).toMatch(new RegExp(`^${backend} \\d`));
      const own = await symmetricEigenAsync(A, p);
      const ext1 = await pythonEigen(A, p, ext, 1);
      // Values: exact to rounding (the spectrum is about 1..p).
      expect(maxDiff(ext1.values, own.values)).toBeLessThan(1e-10 * p);
      for (let j = 1; j < p; j++) expect(ext1.values[j]).toBeLessThan(ext1.values[j - 1]);
      // Vectors: gaps of ~1 against rounding of 1e-13 pin each vector, and the sign rule its sign.
      expect(maxDiff(ext1.vectorsT, own.vectorsT)).toBeLessThan(1e-9);
      // vectors is vectorsT transposed (columns are the eigenvectors).
      for (const j of [0, 5, p - 1]) for (const i of [0, 3, p - 2]) expect(ext1.vectors[i * p + j]).toBe(ext1.vectorsT[j * p + i]);
      // A v = λ v for the top, a middle and the last pair, independently of either solver.
      for (const j of [0, p >> 1, p - 1]) {
        let r = 0;
        for (let i = 0; i < p; i++) {
          let av = 0;
          for (let k = 0; k < p; k++) av += A[i * p + k] * ext1.vectorsT[j * p + k];
          r = Math.max(r, Math.abs(av - ext1.values[j] * ext1.vectorsT[j * p + i]));
        }
        expect(r).toBeLessThan(1e-11 * p);
      }
    },
    60_000,
  );

  it('is what symmetricEigenAsync, blockEigen and fitSolver use for large matrices only, densely', async () => {
    const ext = resolveEigensolver('numpy')!;
    const phases: string[] = [];
    const viaOrt = await symmetricEigenAsync(A, p, { external: ext, onWork: (phase) => phases.push(phase) });
    expect(phases).toEqual([`dense eigensolve (${ext.version})`]);
    expect(maxDiff(viaOrt.values, (await pythonEigen(A, p, ext)).values)).toBe(0);
    // Below EXTERNAL_EIGEN_MIN_P kvtc solves it itself (no phase from the external one).
    const small = separated(64, 3);
    const phasesSmall: string[] = [];
    await symmetricEigenAsync(small, 64, { external: ext, onWork: (phase) => phasesSmall.push(phase) });
    expect(phasesSmall).toEqual([]);
    // The randomized solver is not used with it: the dense decomposition is the faster.
    expect(blockSolver(4096, 2000)).toBe('randomized');
    expect(blockSolver(4096, 2000, ext)).toBe('dense-truncated');
    expect(blockSolver(4096, 4096, ext)).toBe('dense');
    expect(fitSolver({ dim: 4096, maxRank: 2000 })).toBe('randomized');
    expect(fitSolver({ dim: 4096, maxRank: 2000, external: ext })).toBe('dense-truncated');
    const top = await blockEigen({ block: A, m: p, k: 10, external: ext });
    expect(top.solver).toBe('dense-truncated');
    expect(top.values.length).toBe(10);
    expect(top.W.length).toBe(p * 10);
    expect(maxDiff(top.values, viaOrt.values.subarray(0, 10))).toBe(0);
  }, 60_000);

  it('auto asks Python only for models whose bases can reach its size, and picks NumPy on the CPU', () => {
    expect(eigensolverFor({ layers: 5, kvHeads: 4, headDim: 8 }, { device: 'cpu' })).toBeUndefined();
    expect(eigensolverFor({ layers: 32, kvHeads: 8, headDim: 128 }, { device: 'cpu' })).toMatchObject({ backend: 'numpy' });
    expect(eigensolverFor({ layers: 32, kvHeads: 8, headDim: 128 }, { device: 'cpu', eigensolver: 'builtin' })).toBeUndefined();
    // Asked for by name it is resolved whatever the model (and fails if missing: below).
    expect(eigensolverFor({ layers: 5, kvHeads: 4, headDim: 8 }, { device: 'cpu', eigensolver: 'numpy' })).toMatchObject({
      backend: 'numpy',
    });
    expect(describeEigensolver(undefined)).toMatch(/^builtin/);
  });

  it.runIf(!cuda)('--device cuda without a GPU torch can use: auto falls back to NumPy, torch by name is an error', () => {
    expect(resolveEigensolver('auto', 'cuda')).toMatchObject({ backend: 'numpy', device: 'cpu' });
    expect(() => resolveEigensolver('torch', 'cuda')).toThrow(
      expect.objectContaining({
        code: 'DEVICE_UNAVAILABLE',
        message: expect.stringMatching(/--eigensolver torch: .*(no CUDA device|could not import torch)/),
      }),
    );
  });

  it('a missing Python: auto falls back to kvtc’s own, a named solver is an error that says what to install', () => {
    const saved = process.env.KVTC_PYTHON;
    process.env.KVTC_PYTHON = '/nonexistent/python3';
    try {
      expect(resolveEigensolver('auto')).toBeUndefined();
      expect(() => resolveEigensolver('numpy')).toThrow(
        expect.objectContaining({
          code: 'DEVICE_UNAVAILABLE',
          message: expect.stringMatching(/--eigensolver numpy: \/nonexistent\/python3 could not be run \(ENOENT\)/),
          fix: expect.stringMatching(/pip install numpy.*KVTC_PYTHON.*--eigensolver builtin/),
        }),
      );
    } finally {
      if (saved === undefined) delete process.env.KVTC_PYTHON;
      else process.env.KVTC_PYTHON = saved;
    }
  });

  it('a solver that fails mid-run is a named error, not a hang or a crash: a vanished Python, a NaN', async () => {
    const ext = resolveEigensolver('numpy')!;
    const gone: ExternalEigen = { ...ext, python: '/nonexistent/python3' };
    await expect(pythonEigen(A, p, gone)).rejects.toMatchObject({
      code: 'DEVICE_UNAVAILABLE',
      message: expect.stringMatching(/could not be run/),
    });
    const bad = Float64Array.from(A);
    bad[5 * p + 9] = Number.NaN;
    await expect(pythonEigen(bad, p, ext)).rejects.toMatchObject({
      code: 'DEVICE_UNAVAILABLE',
      message: expect.stringMatching(/failed on a \d+ × \d+ matrix: eigh\.py: the \d+ x \d+ matrix holds NaN or infinite entries/),
    });
    await expect(pythonEigen(A, p - 1, ext)).rejects.toMatchObject({ code: 'INTERNAL' });
  }, 60_000);
});

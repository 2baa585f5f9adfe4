// Tested by test/fit/eigen-python.test.ts.
/**
 * The dense eigensolver outside Node: src/fit/eigh.py, LAPACK's dsyevd through NumPy or
 * torch.linalg.eigh (on the CPU, or on a CUDA GPU: cuSOLVER), in a child process. kvtc's own
 * solver (eigen-steps.ts) runs its products on ONNX Runtime but its Householder reduction's
 * matrix-vector products and divide and conquer in JavaScript: at m = 4,096 on two cores it took
 * 35.8–55.2 s where NumPy takes 7.9 s (docs/benchmarks.md, "External eigensolver"), and on a GPU
 * that JavaScript stays on the host. calibrate --eigensolver picks it (auto: NumPy when the
 * machine's Python has it, else kvtc's own); the results agree to rounding (same sign rule).
 *
 * The matrix goes to the child's stdin and the eigenpairs come back on its stdout (no files).
 */
import { spawn, spawnSync } from 'node:child_process';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { invariant, KvtcError } from '../errors.js';
import { PACKAGE_ROOT } from '../paths.js';
import { transpose } from '../math/gemm.js';
import type { EigenResult } from './eigen-types.js';

/** Which external solver, as calibrate resolved it (plain data: it travels to worker threads). */
export interface ExternalEigen {
  /** The Python executable (KVTC_PYTHON, else python3). */
  python: string;
  backend: 'numpy' | 'torch';
  device: 'cpu' | 'cuda';
  /** What the probe found, e.g. "numpy 2.4.6". */
  version: string;
}

export type EigensolverChoice = 'auto' | 'builtin' | 'numpy' | 'torch';
export const EIGENSOLVERS: readonly EigensolverChoice[] = ['auto', 'builtin', 'numpy', 'torch'];

/** Below this the child's start (Python and NumPy's import, ~0.2 s) costs more than kvtc's own solve. */
export const EXTERNAL_EIGEN_MIN_P = 768;

export const EIGH_SCRIPT = join(PACKAGE_ROOT, 'src', 'fit', 'eigh.py');

const INSTALL_FIX =
  'Install NumPy for that Python (`python3 -m pip install numpy`; torch for --eigensolver torch), set KVTC_PYTHON to a Python that has it, or use --eigensolver builtin.';

function pythonExe(): string {
  return process.env.KVTC_PYTHON || 'python3';
}

/** The backend's version through `python`, or why it is not there. */
function probe(python: string, backend: 'numpy' | 'torch', device: 'cpu' | 'cuda'): { version?: string; why?: string } {
  const code =
    backend === 'numpy'
      ? 'import numpy; print("numpy " + numpy.__version__)'
      : `import numpy, torch; ok = ${device === 'cuda' ? 'torch.cuda.is_available()' : 'True'}; print(("torch " + torch.__version__) if ok else "")`;
  // From the temporary folder: `python -c` imports from its working directory first.
  const r = spawnSync(python, ['-c', code], {
    encoding: 'utf8',
    timeout: 60_000,
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: tmpdir(),
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
  });
  if (r.error) return { why: `${python} could not be run (${(r.error as NodeJS.ErrnoException).code ?? r.error.message})` };
  if (r.status !== 0)
    return {
      why: `${python} could not import ${backend}: ${(r.stderr ?? '').trim().split('\n').pop() || `it exited with status ${r.status ?? r.signal}`}`,
    };
  const version = (r.stdout ?? '').trim();
  if (!version) return { why: `torch (through ${python}) sees no CUDA device` };
  return { version };
}

/**
 * The external solver calibrate uses, or undefined for kvtc's own. 'auto': torch on the GPU
 * with --device cuda when it sees one, else NumPy, else kvtc's own. Asked for by name, a solver
 * that is not there is an error before any work (DEVICE_UNAVAILABLE).
 */
export function resolveEigensolver(choice: EigensolverChoice = 'auto', device: 'cpu' | 'cuda' = 'cpu'): ExternalEigen | undefined {
  if (choice === 'builtin') return undefined;
  const python = pythonExe();
  const tries: ('numpy' | 'torch')[] = choice === 'auto' ? (device === 'cuda' ? ['torch', 'numpy'] : ['numpy']) : [choice];
  const whys: string[] = [];
  for (const backend of tries) {
    const on = backend === 'torch' ? device : 'cpu';
    const p = probe(python, backend, on);
    if (p.version) return { python, backend, device: on, version: p.version };
    whys.push(p.why!);
  }
  if (choice === 'auto') return undefined;
  throw new KvtcError('DEVICE_UNAVAILABLE', `--eigensolver ${choice}: ${whys.join('; ')}`, { fix: INSTALL_FIX, context: { python } });
}

/** How the result and the CLI name a solver. */
export function describeEigensolver(e: ExternalEigen | undefined): string {
  if (!e) return 'builtin (kvtc: ONNX Runtime products, JavaScript reduction)';
  return e.backend === 'numpy' ? `${e.version} (LAPACK dsyevd)` : `${e.version} linalg.eigh on ${e.device}`;
}

/** Live children, killed if this process exits while they run (a second Ctrl-C). */
const live = new Set<ReturnType<typeof spawn>>();
let hooked = false;

/**
 * Every eigenpair of the symmetric A [p, p] (float64, row-major) by the external solver:
 * EigenResult (values descending, vectors [p, p] orthonormal columns and their rows vectorsT,
 * kvtc's sign rule). `threads`: BLAS threads of the child (0 = every core).
 */
export async function pythonEigen(A: Float64Array, p: number, ext: ExternalEigen, threads = 0): Promise<EigenResult> {
  invariant(A.length === p * p, `Error in pythonEigen: A length (${A.length}) must be p*p (${p}*${p})`);
  const t = String(threads > 0 ? threads : availableParallelism());
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  return new Promise((resolve, reject) => {
    const child = spawn(ext.python, [EIGH_SCRIPT, '--m', String(p), '--backend', ext.backend, '--device', ext.device, '--threads', t], {
      stdio: ['pipe', 'pipe', 'pipe'],
      cwd: tmpdir(),
      env: { ...process.env, OPENBLAS_NUM_THREADS: t, OMP_NUM_THREADS: t, MKL_NUM_THREADS: t, PYTHONDONTWRITEBYTECODE: '1' },
    });
    live.add(child);
    const values = new Float64Array(p);
    const rows = new Float64Array(p * p);
    const valueBytes = new Uint8Array(values.buffer);
    const rowBytes = new Uint8Array(rows.buffer);
    let header = '';
    let headerDone = false;
    let got = 0;
    let stderr = '';
    const failed = (why: string) =>
      new KvtcError('DEVICE_UNAVAILABLE', `the external eigensolver (${describeEigensolver(ext)}) failed on a ${p} × ${p} matrix: ${why}`, {
        fix: INSTALL_FIX,
        context: { python: ext.python, script: EIGH_SCRIPT },
      });
    child.stdout.on('data', (chunk: Buffer) => {
      let c = chunk;
      if (!headerDone) {
        const nl = c.indexOf(10);
        if (nl < 0) {
          header += c.toString('utf8');
          if (header.length > 4096) child.kill('SIGKILL');
          return;
        }
        header += c.subarray(0, nl).toString('utf8');
        headerDone = true;
        c = c.subarray(nl + 1);
      }
      const total = valueBytes.length + rowBytes.length;
      const n = Math.min(c.length, total - got);
      for (let i = 0; i < n;) {
        const at = got + i;
        const [dst, off] = at < valueBytes.length ? [valueBytes, at] : [rowBytes, at - valueBytes.length];
        const take = Math.min(n - i, dst.length - off);
        dst.set(c.subarray(i, i + take), off);
        i += take;
      }
      got += n;
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr = (stderr + c.toString('utf8')).slice(-4096);
    });
    child.on('error', (e) => {
      live.delete(child);
      reject(failed(`${ext.python} could not be run (${(e as NodeJS.ErrnoException).code ?? e.message})`));
    });
    child.on('close', (code, signal) => {
      live.delete(child);
      if (code !== 0) return reject(failed(stderr.trim().split('\n').pop() || `exit ${code ?? signal}`));
      if (got !== valueBytes.length + rowBytes.length)
        return reject(failed(`it returned ${got} of ${valueBytes.length + rowBytes.length} bytes`));
      resolve({ values, vectors: transpose(rows, p, p), vectorsT: rows });
    });
    // The child may fail before it has read everything (EPIPE): 'close' reports why.
    child.stdin.on('error', () => {});
    child.stdin.end(new Uint8Array(A.buffer, A.byteOffset, A.byteLength));
  });
}

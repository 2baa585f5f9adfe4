// Tested by test/calibrate/calibrate.test.ts and test/acceptance/pinned-bytes.test.ts.
/**
 * Fits bases in parallel: each basis's eigendecomposition and held-out error tables are
 * independent, CPU-bound JavaScript, so they run on worker threads (one per core). Small
 * bases run inline: a worker's start-up would cost more than the work.
 */
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { movable, spawnWorker } from '../worker.js';
import { invariant } from '../errors.js';
import { matMulAsync, type OrtProducts, symmetricEigenAsync } from '../fit/eigen-ort.js';
import type { Device } from '../onnx/devices.js';
import { RANDOMIZED_MAX_RANK_FRACTION, randomizedEigenAsync } from '../fit/eigen-randomized.js';
import { transpose } from '../math/gemm.js';
import { FIT_WORKER_MIN_P, LARGE_EIGEN_MIN_P, RANDOMIZED_EIGEN_MIN_P } from '../fit/ort-thresholds.js';
import type { KvKind } from '../codec/types.js';
import type { EigenWork } from '../fit/eigen-types.js';
import { EXTERNAL_EIGEN_MIN_P, type ExternalEigen } from '../fit/eigen-python.js';
import { centeredHeldout, heldoutFromProduct, prepareAllocation, type AllocationTables } from '../fit/fit.js';

export interface FitJob {
  kind: KvKind;
  layers: number[];
  dim: number;
  /** [p, p] float64 covariance (absent when `eigen` is given) and [p] mean. */
  cov?: Float64Array;
  mean: Float64Array;
  /**
   * Eigenpairs already fitted (the two-level fit, src/fit/two-level.ts): vectors [p, k]
   * orthonormal columns, values [k] descending. The job then only builds the error tables.
   */
  eigen?: { values: Float64Array; vectors: Float64Array | Float32Array };
  /** With `eigen`: the held-out coefficients on it, computed already (fit.ts prepareAllocation). */
  coefficients?: { coeffs: Float32Array; residual: number };
  /** Float32Array // [H, p] held-out features. */
  heldout: Float32Array;
  heldoutTokens: number;
  /**
   * Components the plans may store at most (fit.ts rankForBudget / maxRankForRatios: the
   * largest budget the ratio search may try). Where maxRank < dim and dim ≥
   * RANDOMIZED_EIGEN_MIN_P the tables hold only the top maxRank components (tables.dim =
   * maxRank, tables.features = dim), from the randomized solver when maxRank ≤
   * RANDOMIZED_MAX_RANK_FRACTION·dim, else from the dense one cut to maxRank. Otherwise (absent,
   * ≥ dim, or a small basis) the full dense eigenbasis, exactly as without it.
   */
  maxRank?: number;
  /** Where the eigensolve's and the projection's products run (calibrate --device; default the CPU). */
  device?: Device;
  /** The external dense eigensolver (calibrate --eigensolver; eigen-python.ts): every eigensolve of p ≥ EXTERNAL_EIGEN_MIN_P is dense on it. */
  external?: ExternalEigen;
}

export interface FitOutput {
  tables: AllocationTables;
  seconds: { eigen: number; tables: number };
  /**
   * How the basis was fitted: the full dense eigenbasis, its top tables.dim components from the
   * randomized or the dense solver, or from the two-level fit (FitJob.eigen).
   */
  solver: 'dense' | 'randomized' | 'dense-truncated' | 'two-level';
}

/** How fitBasisTables fits `job` (see FitJob.maxRank). */
export function fitSolver(job: Pick<FitJob, 'dim' | 'maxRank' | 'eigen' | 'external'>): FitOutput['solver'] {
  if (job.eigen) return 'two-level';
  if (job.maxRank === undefined || job.maxRank >= job.dim || job.dim < RANDOMIZED_EIGEN_MIN_P) return 'dense';
  // The external solver decomposes densely faster than kvtc's randomized one solves the top 0.6.
  if (job.external && job.dim >= EXTERNAL_EIGEN_MIN_P) return 'dense-truncated';
  return job.maxRank <= RANDOMIZED_MAX_RANK_FRACTION * job.dim ? 'randomized' : 'dense-truncated';
}

/**
 * Eigendecomposition (dense, or truncated: FitJob.maxRank) + error tables of one basis. Large
 * bases (p ≥ LARGE_EIGEN_MIN_P) run their eigen products on ONNX Runtime with `eigenThreads`
 * intra-op threads (0 = all cores; workers pass 1, the pool already runs one per core).
 */
export async function fitBasisTables(job: FitJob, opts: { eigenThreads?: number } = {}): Promise<FitOutput> {
  const threads = opts.eigenThreads ?? 0;
  if (job.maxRank !== undefined) {
    invariant(
      Number.isInteger(job.maxRank) && job.maxRank >= 1,
      `Error in fitBasisTables: maxRank (${job.maxRank}) must be an integer >= 1`,
    );
  }
  const solver = fitSolver(job);
  let t = performance.now();
  let eig: { values: Float64Array; vectors: Float64Array | Float32Array };
  if (job.eigen) eig = job.eigen;
  else {
    invariant(job.cov !== undefined, 'Error in fitBasisTables: a job needs a covariance or eigenpairs');
    eig = await denseOrRandomized(job.cov, job, solver, { threads, device: job.device, external: job.external });
  }
  const eigen = (performance.now() - t) / 1000;
  t = performance.now();
  const coefficients =
    job.coefficients ?? (job.dim >= LARGE_EIGEN_MIN_P ? await projectOnOrt(job, eig, { threads, device: job.device }) : undefined);
  const tables = prepareAllocation({ ...job, vectors: eig.vectors, values: eig.values, coefficients });
  return { tables, seconds: { eigen, tables: (performance.now() - t) / 1000 }, solver };
}

/**
 * The held-out coefficients (X − mean)·V [H, k] of a large basis on ONNX Runtime's float64 MatMul
 * (25–60 GFLOP/s against ~4 for the JavaScript GEMM: a per-layer 8B basis, 4,096 × 1,024 × 614,
 * took 1.6 s in JavaScript, 51 of each fit worker's 138 s in a profiled run). Same float64
 * products as prepareAllocation's own projection, summed in another order.
 */
async function projectOnOrt(
  job: FitJob,
  eig: { values: Float64Array; vectors: Float64Array | Float32Array },
  on: OrtProducts,
): Promise<{ coeffs: Float32Array; residual: number }> {
  const p = job.dim;
  const k = eig.values.length;
  const H = job.heldoutTokens;
  const Y = centeredHeldout(job, p, H);
  const V = eig.vectors instanceof Float64Array ? eig.vectors : Float64Array.from(eig.vectors);
  return heldoutFromProduct(Y, await matMulAsync(Y, V, H, p, k, on.threads, on.device), k < p);
}

async function denseOrRandomized(
  cov: Float64Array,
  job: Pick<FitJob, 'dim' | 'maxRank'>,
  solver: FitOutput['solver'],
  on: OrtProducts & { onWork?: EigenWork },
): Promise<{ values: Float64Array; vectors: Float64Array }> {
  let eig: { values: Float64Array; vectors: Float64Array };
  if (solver === 'randomized') eig = await randomizedEigenAsync(cov, job.dim, job.maxRank!, on);
  else {
    const full = await symmetricEigenAsync(cov, job.dim, on);
    const k = solver === 'dense' ? job.dim : job.maxRank!;
    eig =
      k === job.dim ? full : { values: full.values.slice(0, k), vectors: transpose(full.vectorsT.subarray(0, k * job.dim), k, job.dim) };
  }
  return eig;
}

/**
 * The top-k eigenpairs of a two-level fit's block of C_Z (two-level-fit.ts TwoLevelFit.basis):
 * the randomized solver up to RANDOMIZED_MAX_RANK_FRACTION of a block from
 * RANDOMIZED_EIGEN_MIN_P on, else the dense one cut to k (blockSolver). At m = 4,096 on two
 * cores the dense solve of every pair took 36 s and the randomized one of 0.6·m 31 s
 * (docs/benchmarks.md, "Rank ~10K"): above 0.6·m the dense one is the cheaper.
 */
export interface BlockEigenTask {
  op: 'block-eigen';
  /** [m, m] symmetric, float64 (moved to a worker, not copied). */
  block: Float64Array;
  m: number;
  k: number;
  device?: Device;
  /** The external dense eigensolver (FitJob.external). */
  external?: ExternalEigen;
  /**
   * ORT intra-op threads for its products (0 = all cores). Default 1 on a worker, where the other
   * worker solves the other kind's block; BlockEigenGate passes 0 to a block too large to pair,
   * which runs alone.
   */
  threads?: number;
  /** The worker posts the solve's phases (EigenWorkMessage) before its result. */
  progress?: boolean;
}

/** A phase of a block eigensolve on a worker (BlockEigenTask.progress; eigen-types.ts EigenWork). */
export interface EigenWorkMessage {
  op: 'eigen-work';
  phase: string;
  done: number;
  total: number;
}

export interface BlockEigenResult {
  /** [k] descending. */
  values: Float64Array;
  /** [m, k] row-major, orthonormal columns. */
  W: Float64Array;
  solver: 'randomized' | 'dense' | 'dense-truncated';
}

/** The solver blockEigen runs for the top k of an m-wide block. */
export function blockSolver(m: number, k: number, external?: ExternalEigen): BlockEigenResult['solver'] {
  if (k >= m) return 'dense';
  if (external && m >= EXTERNAL_EIGEN_MIN_P) return 'dense-truncated';
  return m >= RANDOMIZED_EIGEN_MIN_P && k <= RANDOMIZED_MAX_RANK_FRACTION * m ? 'randomized' : 'dense-truncated';
}

/**
 * Solves a BlockEigenTask here; `threads`: ORT intra-op threads (0 = all cores; 1 in a worker);
 * `onWork` hears the solve's phases.
 */
export async function blockEigen(task: Omit<BlockEigenTask, 'op'>, threads = 0, onWork?: EigenWork): Promise<BlockEigenResult> {
  const { block, m, k } = task;
  invariant(Number.isInteger(k) && k >= 1 && k <= m, `Error in blockEigen: k (${k}) must be an integer in [1, m=${m}]`);
  const solver = blockSolver(m, k, task.external);
  const e = await denseOrRandomized(block, { dim: m, maxRank: k }, solver, {
    threads,
    device: task.device,
    external: task.external,
    onWork,
  });
  return { values: e.values, W: e.vectors, solver };
}

/**
 * Runs a BlockEigenTask on the worker that is about to take the job (fitBases), or here;
 * `onWork` hears its phases.
 */
export type BlockEigenRunner = (task: BlockEigenTask, onWork?: EigenWork) => Promise<BlockEigenResult>;

/**
 * Bytes a block eigensolve holds. Randomized (blockSolver): the block, the sketch (l = 1.1k)
 * about four times over, and its l × l Rayleigh–Ritz; R = 4,096 for all 32 layers of 8B
 * geometry at k = 0.6·R: 0.66 GB. Dense: eight m × m float64 arrays (the block, the reduction's
 * copy, divide and conquer's eigenvectors, their transpose for the back-transform, and the
 * result in both layouts; eigen-steps.ts), where 7.1 were measured at m = 4,096; R = 12,288: 9.7 GB.
 */
export function blockEigenBytes(m: number, k: number, external?: ExternalEigen): number {
  // The external solver (eigen-python.ts): the block and the result rows and columns here, the
  // matrix, LAPACK's copy and workspace and the vectors in the child: about as many.
  if (blockSolver(m, k, external) !== 'randomized') return 8 * 8 * m * m;
  const l = Math.min(m, k + Math.max(10, Math.ceil(k / 10)));
  return 8 * m * m + 4 * 8 * l * m + 3 * 8 * l * l;
}

/** Block eigensolves run at once (on two workers) only while their working sets add up to at most this; larger ones run one at a time. */
export const PARALLEL_BLOCK_EIGEN_BYTES = 2 * 2 ** 30;

/**
 * Admits block eigensolves while the bytes in flight (blockEigenBytes) stay within `limit`,
 * always one: at the default R two bases are solved on two cores at once, at a large
 * --two-level-rank one after the other, so memory does not double, each with every core for its
 * products (BlockEigenTask.threads = 0).
 */
export class BlockEigenGate {
  private inFlight = 0;
  private waiting: (() => void)[] = [];
  constructor(readonly limit = PARALLEL_BLOCK_EIGEN_BYTES) {}

  wrap(run: BlockEigenRunner): BlockEigenRunner {
    return async (task, onWork) => {
      const h = this.held(run);
      try {
        return await h.run(task, onWork);
      } finally {
        h.release();
      }
    };
  }

  /**
   * `run` admitted as wrap() admits it, its bytes held until release() (idempotent) rather than
   * when the solve returns: a two-level basis's lift and tuning coefficients follow its solve
   * (twice the block's width in float64 rows: 2 GB at R = 12,288), and with the slot held they
   * end before the next lone solve starts. Measured at R = 8,192 on one 70B stage, the run's peak
   * was that overlap: 9.9 GiB, against 7–8 GiB in every other phase.
   */
  held(run: BlockEigenRunner): { run: BlockEigenRunner; release: () => void } {
    let bytes = 0;
    const release = () => {
      if (bytes === 0) return;
      this.inFlight -= bytes;
      bytes = 0;
      for (const r of this.waiting.splice(0)) r();
    };
    return {
      run: async (task, onWork) => {
        invariant(bytes === 0, 'Error in BlockEigenGate.held: one solve per hold');
        const b = blockEigenBytes(task.m, task.k, task.external);
        while (this.inFlight > 0 && this.inFlight + b > this.limit) await new Promise<void>((r) => this.waiting.push(r));
        this.inFlight += b;
        bytes = b;
        // Too large to pair with another: it runs alone, so its products take every core.
        const alone = 2 * b > this.limit;
        try {
          return await run(alone ? { ...task, threads: 0 } : task, onWork);
        } catch (e) {
          release();
          throw e;
        }
      },
      release,
    };
  }
}

/** blockEigen on this thread, with every core for its products. */
export const blockEigenHere: BlockEigenRunner = (task, onWork) => blockEigen(task, 0, onWork);

/**
 * A job built only when a worker is free to take it (fitBases): its covariance (8p², a copy of
 * the accumulator's) and tuning features exist only while it is in flight, not for every basis
 * of a grouping at once (62 layers of Gemma 3 27B geometry: 4 GiB of covariances). `make` may
 * hand a block eigensolve to that worker (`run`): two two-level bases are then solved on two
 * cores at once, where their Rayleigh–Ritz steps in JavaScript would otherwise queue on this thread.
 */
export interface LazyFitJob {
  dim: number;
  make(run: BlockEigenRunner): Promise<FitJob>;
}

const isLazy = (j: FitJob | LazyFitJob): j is LazyFitJob => 'make' in j;

/**
 * The buffers of a job, distinct and not shared (transferable): those of fitted eigenpairs, or
 * every one of a lazy job (built for the worker alone).
 */
function transferList(j: FitJob, all = false): ArrayBuffer[] {
  const arrays = [j.eigen?.vectors, j.eigen?.values, j.coefficients?.coeffs, j.mean, j.heldout, all ? j.cov : undefined];
  const bufs = new Set<ArrayBuffer>();
  for (const a of arrays) if (a && movable(a)) bufs.add(a.buffer);
  return [...bufs];
}

/**
 * A block eigensolve on worker `w` (idle: between two of its jobs); the block moves to it. With
 * `onWork` the worker posts the solve's phases before its result.
 */
function runOn(w: Worker, task: BlockEigenTask, onWork?: EigenWork): Promise<BlockEigenResult> {
  return new Promise((resolve) => {
    const on = (msg: BlockEigenResult | EigenWorkMessage) => {
      if ('op' in msg) return onWork?.(msg.phase, msg.done, msg.total);
      w.off('message', on);
      resolve(msg);
    };
    w.on('message', on);
    const b = task.block;
    w.postMessage(onWork ? { ...task, progress: true } : task, movable(b) ? [b.buffer] : []);
  });
}

/** Runs every job (lazy ones built as a worker takes them); results in job order. `onDone(i)` reports progress. */
export async function fitBases(
  jobs: (FitJob | LazyFitJob)[],
  opts: { threads?: number; onDone?: (done: number) => void } = {},
): Promise<FitOutput[]> {
  const out: FitOutput[] = new Array(jobs.length);
  const threads = Math.min(opts.threads ?? availableParallelism(), jobs.length);
  let done = 0;
  const finish = (i: number, r: FitOutput) => {
    out[i] = r;
    opts.onDone?.(++done);
  };
  if (threads <= 1 || jobs.every((j) => j.dim < FIT_WORKER_MIN_P)) {
    for (const [i, j] of jobs.entries()) finish(i, await fitBasisTables(isLazy(j) ? await j.make(blockEigenHere) : j));
    return out;
  }
  const workers = Array.from({ length: threads }, () => spawnWorker(import.meta.url, './fit-worker'));
  let next = 0;
  try {
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            const take = async () => {
              if (next >= jobs.length) return resolve();
              const i = next++;
              const x = jobs[i];
              const lazy = isLazy(x);
              const j = lazy ? await x.make((task, onWork) => runOn(w, task, onWork)) : x;
              w.once('message', (r: FitOutput) => {
                finish(i, r);
                take().catch(reject);
              });
              // A fitted basis (FitJob.eigen) or a lazy job moves to the worker rather than being
              // copied: an all-layer basis of 8B geometry is 512 MiB. The job is not read here again.
              w.postMessage(j, lazy || j.eigen ? transferList(j, lazy) : []);
            };
            w.once('error', reject);
            take().catch(reject);
          }),
      ),
    );
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
  return out;
}

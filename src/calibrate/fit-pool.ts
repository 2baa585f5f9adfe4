// Tested by test/calibrate/calibrate.test.ts and test/acceptance/pinned-bytes.test.ts.
/**
 * Fits bases in parallel: each basis's eigendecomposition and held-out error tables are
 * independent, CPU-bound JavaScript, so they run on worker threads (one per core). Small
 * bases run inline: a worker's start-up would cost more than the work.
 */
import { availableParallelism } from 'node:os';
import { spawnWorker } from '../worker.js';
import { invariant } from '../errors.js';
import { symmetricEigenAsync } from '../fit/eigen-ort.js';
import { randomizedEigenAsync } from '../fit/eigen-randomized.js';
import { FIT_WORKER_MIN_P, RANDOMIZED_EIGEN_MIN_P } from '../fit/ort-thresholds.js';
import type { KvKind } from '../codec/types.js';
import { prepareAllocation, type AllocationTables } from '../fit/fit.js';

export interface FitJob {
  kind: KvKind;
  layers: number[];
  dim: number;
  /** [p, p] float64 covariance and [p] mean. */
  cov: Float64Array;
  mean: Float64Array;
  /** Float32Array // [H, p] held-out features. */
  heldout: Float32Array;
  heldoutTokens: number;
  /**
   * Components the plans may store at most (e.g. rankForBudget at the largest budget the
   * ratio search may try). Where maxRank < dim and dim ≥ RANDOMIZED_EIGEN_MIN_P the basis is
   * the top-maxRank eigenvectors from the randomized solver and the tables hold maxRank
   * components (tables.dim = maxRank, tables.features = dim); otherwise (absent, ≥ dim, or a
   * small basis) the full dense eigenbasis, exactly as without it.
   */
  maxRank?: number;
}

export interface FitOutput {
  tables: AllocationTables;
  seconds: { eigen: number; tables: number };
  /** Which eigensolver fitted the basis. */
  solver: 'dense' | 'randomized';
}

/** Whether `job` is fitted by the truncated randomized solver (see FitJob.maxRank). */
export function usesRandomizedEigen(job: Pick<FitJob, 'dim' | 'maxRank'>): boolean {
  return job.maxRank !== undefined && job.maxRank < job.dim && job.dim >= RANDOMIZED_EIGEN_MIN_P;
}

/**
 * Eigendecomposition (dense, or truncated randomized: FitJob.maxRank) + error tables of one
 * basis. Large bases (p ≥ LARGE_EIGEN_MIN_P) run their eigen products on ONNX Runtime with
 * `eigenThreads` intra-op threads (0 = all cores; workers pass 1, the pool already runs one per core).
 */
export async function fitBasisTables(job: FitJob, opts: { eigenThreads?: number } = {}): Promise<FitOutput> {
  const threads = opts.eigenThreads ?? 0;
  const randomized = usesRandomizedEigen(job);
  if (job.maxRank !== undefined) {
    invariant(Number.isInteger(job.maxRank) && job.maxRank >= 1, `Error in fitBasisTables: maxRank (${job.maxRank}) must be an integer >= 1`);
  }
  let t = performance.now();
  const eig = randomized ? await randomizedEigenAsync(job.cov, job.dim, job.maxRank!, { threads }) : await symmetricEigenAsync(job.cov, job.dim, { threads });
  const eigen = (performance.now() - t) / 1000;
  t = performance.now();
  const tables = prepareAllocation({ ...job, vectors: eig.vectors, values: eig.values });
  return { tables, seconds: { eigen, tables: (performance.now() - t) / 1000 }, solver: randomized ? 'randomized' : 'dense' };
}


/** Runs every job; results in job order. `onDone(i)` reports progress. */
export async function fitBases(jobs: FitJob[], opts: { threads?: number; onDone?: (done: number) => void } = {}): Promise<FitOutput[]> {
  const out: FitOutput[] = new Array(jobs.length);
  const threads = Math.min(opts.threads ?? availableParallelism(), jobs.length);
  let done = 0;
  const finish = (i: number, r: FitOutput) => {
    out[i] = r;
    opts.onDone?.(++done);
  };
  if (threads <= 1 || jobs.every((j) => j.dim < FIT_WORKER_MIN_P)) {
    for (const [i, j] of jobs.entries()) finish(i, await fitBasisTables(j));
    return out;
  }
  const workers = Array.from({ length: threads }, () => spawnWorker(import.meta.url, './fit-worker'));
  let next = 0;
  try {
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            const take = () => {
              if (next >= jobs.length) return resolve();
              const i = next++;
              const j = jobs[i];
              w.once('message', (r: FitOutput) => {
                finish(i, r);
                take();
              });
              w.postMessage(j);
            };
            w.once('error', reject);
            take();
          }),
      ),
    );
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
  return out;
}

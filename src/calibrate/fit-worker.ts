// Tested by test/calibrate/calibrate.test.ts.
/** Worker thread: eigendecomposition + held-out error tables of one basis, or a two-level block's eigenpairs (see fit-pool.ts). */
import { parentPort } from 'node:worker_threads';
import { movable } from '../worker.js';
import { blockEigen, type BlockEigenTask, type EigenWorkMessage, fitBasisTables, type FitJob } from './fit-pool.js';

parentPort!.on('message', async (job: FitJob | BlockEigenTask) => {
  if ('op' in job) {
    const onWork = job.progress
      ? (phase: string, done: number, total: number) =>
          parentPort!.postMessage({ op: 'eigen-work', phase, done, total } satisfies EigenWorkMessage)
      : undefined;
    const e = await blockEigen(job, job.threads ?? 1, onWork);
    const own = (a: Float64Array) => (movable(a) ? [a.buffer] : []);
    parentPort!.postMessage(e, [...own(e.W), ...own(e.values)]);
    return;
  }
  const r = await fitBasisTables(job, { eigenThreads: 1 });
  const t = r.tables;
  parentPort!.postMessage(r, [
    t.none.buffer,
    t.staticErr.buffer,
    t.staticLo.buffer,
    t.staticHi.buffer,
    t.staticTuned.buffer,
    t.dynamicErr.buffer,
    t.vectors.buffer,
    t.values.buffer,
    t.coeffs.buffer,
    t.mean.buffer,
  ] as ArrayBuffer[]);
});

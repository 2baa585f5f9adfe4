// Tested by test/calibrate/calibrate.test.ts.
/** Worker thread: eigendecomposition + held-out error tables of one basis (see fit-pool.ts). */
import { parentPort } from 'node:worker_threads';
import { fitBasisTables, type FitJob } from './fit-pool.js';

parentPort!.on('message', async (job: FitJob) => {
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

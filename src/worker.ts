// Tested by test/codec/range.test.ts (threaded codec) and test/calibrate/calibrate.test.ts.
import { Worker } from 'node:worker_threads';

/**
 * Starts a worker thread on a module next to the caller (`rel` without extension). Under
 * tsx/vitest the caller is TypeScript and the worker needs the same loader, so the .ts
 * module is imported through tsx's register API; built code runs the .js file directly.
 */
export function spawnWorker(callerUrl: string, rel: string): Worker {
  const isTs = callerUrl.endsWith('.ts');
  const url = new URL(`${rel}${isTs ? '.ts' : '.js'}`, callerUrl);
  if (!isTs) return new Worker(url);
  return new Worker(`import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(url.href)}); })`, { eval: true });
}

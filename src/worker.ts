// Tested by test/codec/range.test.ts (threaded codec), test/calibrate/calibrate.test.ts and test/calibrate/fit-pool.test.ts (movable).
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

/**
 * Whether `a`'s buffer can move to a worker: it is all of an ArrayBuffer and not empty. An empty
 * one (nothing to gain) may be a buffer moved already: Node drops a message whose transfer list
 * holds a detached buffer without a word, and whoever waits for its answer waits forever, where a
 * copy of it fails at once (DataCloneError). Used by the fit pool and the codec's worker.
 */
export function movable(a: ArrayBufferView): a is ArrayBufferView & { buffer: ArrayBuffer } {
  return a.byteLength > 0 && a.buffer instanceof ArrayBuffer && a.byteLength === a.buffer.byteLength;
}

// Tested by test/bench/bench.test.ts.
/**
 * The physical limits kvtc's codec speed is measured against, on the same bytes: a memcpy of
 * the raw fp16 cache, and zlib (Z_RLE, the strategy kvtc's blobs use) deflate/inflate of it.
 */
import { constants as zc, deflateRawSync, inflateRawSync } from 'node:zlib';
import { timeRepeats, type Summary } from './stats.js';

export interface LimitTimings {
  memcpy: Summary;
  deflate: Summary;
  inflate: Summary;
  deflatedBytes: number;
}

export async function measureLimits(raw: Uint8Array, repeats: number): Promise<LimitTimings> {
  const dst = new Uint8Array(raw.byteLength);
  const memcpy = await timeRepeats(repeats, () => dst.set(raw));
  const opts = { strategy: zc.Z_RLE, level: 1 };
  let z = deflateRawSync(raw, opts);
  const deflate = await timeRepeats(repeats, () => (z = deflateRawSync(raw, opts)), 0);
  const inflate = await timeRepeats(repeats, () => inflateRawSync(z));
  return { memcpy, deflate, inflate, deflatedBytes: z.byteLength };
}

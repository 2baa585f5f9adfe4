import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { summarize } from '../../src/bench/stats.js';
import { prefixCache, relativeError } from '../../src/bench/cache.js';
import { main } from '../../src/cli/main.js';
import { memoryIO } from '../../src/cli/io.js';
import type { KvCache } from '../../src/model/types.js';

describe('bench helpers', () => {
  it('summarize: median of odd and even counts, min, max', () => {
    expect(summarize([3, 1, 2])).toEqual({ median: 2, min: 1, max: 3, runs: 3 });
    expect(summarize([4, 1, 2, 3]).median).toBe(2.5);
  });

  it('prefixCache keeps the first tokens of every head; relativeError is 0 on itself', () => {
    const c: KvCache = {
      layers: 1,
      kvHeads: 2,
      headDim: 2,
      tokens: 3,
      dtype: 'float32',
      startPosition: 0,
      keys: [Float32Array.from({ length: 12 }, (_, i) => i)],
      values: [Float32Array.from({ length: 12 }, (_, i) => -i)],
    };
    const p = prefixCache(c, 2);
    expect(Array.from(p.keys[0])).toEqual([0, 1, 2, 3, 6, 7, 8, 9]);
    expect(relativeError(c, c)).toEqual({ key: 0, value: 0 });
  });
});

describe('kvtc bench --quick --json', () => {
  const cache = mkdtempSync(join(tmpdir(), 'kvtc-bench-test-'));
  const before = process.env.KVTC_BENCH_CACHE;
  process.env.KVTC_BENCH_CACHE = cache;
  afterAll(() => {
    if (before === undefined) delete process.env.KVTC_BENCH_CACHE;
    else process.env.KVTC_BENCH_CACHE = before;
    rmSync(cache, { recursive: true, force: true });
  });

  it('reports throughput against memcpy/zlib, ratios and errors, restore vs recompute, calibration stages', async () => {
    const io = memoryIO();
    const code = await main(['node', 'kvtc', 'bench', '--quick', '--json'], io);
    // stderr carries only progress lines (plain, since it is not a terminal); stdout the result.
    expect(io.stderr.join('\n')).toMatch(/^(\[kvtc\] [^\n]*(\n|$))*$/);
    expect(code).toBe(0);
    // --json keys are snake_case (the output contract).
    const r = JSON.parse(io.stdout.join('\n')) as any;
    expect(r.machine.cores).toBeGreaterThan(0);
    expect(r.gpu).toMatch(/not measured/);
    expect(r.models.map((m) => m.name)).toHaveLength(2);
    for (const m of r.models as any[]) {
      const names = m.throughput.map((t: { name: string }) => t.name);
      for (const n of ['memcpy', 'zlib deflate', 'zlib inflate', 'kvtc encode', 'kvtc decode']) expect(names).toContain(n);
      for (const t of m.throughput as { seconds: { min: number; median: number; max: number }; mbps: number }[]) {
        expect(t.seconds.min).toBeLessThanOrEqual(t.seconds.median);
        expect(t.seconds.median).toBeLessThanOrEqual(t.seconds.max);
        expect(t.mbps).toBeGreaterThan(0);
      }
      expect(Object.keys(m.decode_stages)).toEqual(expect.arrayContaining(['inflate', 'dequantize', 'transform', 'scatter', 'total']));
      // The floor figures: the float32 cache decode writes, the blob inflate reads, the GEMM work.
      expect(m.decode_work.output_bytes).toBe(m.shape.layers * 2 * m.shape.kv_heads * m.tokens * m.shape.head_dim * 4);
      expect(m.decode_work.blob_bytes).toBe(m.codecs[0].bytes);
      expect(m.decode_work.gflop).toBeGreaterThan(0);
      expect(m.codecs.map((c: { name: string }) => c.name)).toEqual(['kvtc', 'fp16', 'int8', 'int4', 'kivi2']);
      for (const c of m.codecs) {
        expect(Number.isFinite(c.rel_error.key) && Number.isFinite(c.rel_error.value)).toBe(true);
        if (c.name !== 'fp16') expect(c.ratio).toBeGreaterThan(1);
      }
      const kvtc = m.codecs[0];
      // Quantized codecs lose something; fp16 of a float32 cache only rounds.
      expect(kvtc.rel_error.key).toBeGreaterThan(0);
      expect(kvtc.rel_error.key).toBeLessThan(1);
      expect(kvtc.ratio_compressed).toBeGreaterThan(kvtc.ratio);
      expect(m.restore.length).toBeGreaterThan(0);
      for (const x of m.restore) {
        expect(x.recompute.median).toBeGreaterThan(0);
        expect(x.restore.median).toBeGreaterThan(0);
        expect(x.speedup).toBeCloseTo(x.recompute.median / x.restore.median, 6);
      }
    }
    expect(r.calibration?.seconds.forward).toBeGreaterThan(0);
  });
});

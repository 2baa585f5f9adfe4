// The memory estimate and its check (src/calibrate/memory-plan.ts): the phases add what each
// holds, fit tokens add nothing, and a calibration over its budget is refused before any work.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { calibrate, groupingCandidates, layerGroups, memoryEstimate } from '../../src/calibrate/calibrate.js';
import { OVERHEAD, RUNTIME_BYTES, checkMemory, estimateMemory } from '../../src/calibrate/memory-plan.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { tempDir } from '../model/helpers.js';

const LLAMA_8B = { layers: 32, kvHeads: 8, headDim: 128 };
const GiB = 2 ** 30;

describe('estimateMemory', () => {
  const c = groupingCandidates(LLAMA_8B, 'auto', undefined, 12 * GiB);
  const groupings = c.fit.map((g) => ({ groups: layerGroups(32, g), twoLevel: (c.sketched ?? []).includes(String(g)) }));
  const base = { groupings, heldout: 4096, report: 8192, ratios: [20], modelBytes: GiB, budget: 12 * GiB };

  it('adds what each phase holds for Llama 3.1 8B geometry with --grouping auto', () => {
    const e = estimateMemory(LLAMA_8B, base);
    // Tuning caches parked on disk: one 512-token sequence and its decoded copy in memory
    // (2 × 512 × 65536 × 4 bytes = 256 MiB); the per-layer covariances 512 MiB (the two-level
    // fit shares them); the two-level sums 512 MiB.
    const seq = 0.25 * GiB;
    expect(e.capture).toBeCloseTo(OVERHEAD * (RUNTIME_BYTES + seq + 0.5 * GiB + 0.5 * GiB + 1.25 * GiB), -3);
    // Fitting peaks with the all-layer plans in the codec (2 bases × 32768 × 4096 floats: every
    // column of the 4,096-wide block; 4.5 copies), the per-layer covariances gone by then, the
    // reduction still held.
    expect(e.fit).toBeCloseTo(OVERHEAD * (RUNTIME_BYTES + seq + 0.5 * GiB + 4.5 * 4 * 2 * 32768 * 4096), -3);
    // The report caches stay on disk: one sequence at a time beside the chosen plans.
    expect(e.report).toBeCloseTo(OVERHEAD * (RUNTIME_BYTES + seq + 4.5 * 4 * 2 * 32768 * 4096), -3);
    expect(e.peak).toBe(Math.max(e.capture, e.fit, e.report));
    // Measured on this geometry at 16K fit tokens: 7.26 GiB with every column of the block (the
    // thirteenth stop), 5.70–6.41 GiB before with 0.6 of it (docs/benchmarks.md).
    expect(e.peak / GiB).toBeGreaterThan(7.26);
    expect(e.peak / GiB).toBeLessThan(11);
  });

  it('grows with the held-out caches, not with anything else the options scale', () => {
    const e = estimateMemory(LLAMA_8B, base);
    // Parked (two-level): the held-out caches are on disk, read a sequence at a time.
    expect(estimateMemory(LLAMA_8B, { ...base, heldout: 8192 }).capture).toBe(e.capture);
    expect(estimateMemory(LLAMA_8B, { ...base, rank: 8192 }).fit).toBeGreaterThan(e.fit);
    // Held (one basis per layer, no two-level fit): they count in full.
    const layer = { ...base, groupings: [{ groups: layerGroups(32, 'layer'), twoLevel: false }] };
    const l = estimateMemory(LLAMA_8B, layer);
    expect(estimateMemory(LLAMA_8B, { ...layer, heldout: 8192 }).capture - l.capture).toBeCloseTo(OVERHEAD * GiB, -3);
    expect(estimateMemory(LLAMA_8B, { ...layer, report: 16384 }).capture - l.capture).toBeCloseTo(OVERHEAD * 2 * GiB, -3);
  });

  it('checkMemory refuses an estimate over the budget, naming the phase and the fixes', () => {
    const e = estimateMemory(LLAMA_8B, { ...base, budget: 2 * GiB });
    expect(() => checkMemory(e, { budgetGiven: true, totalBytes: 24 * GiB })).toThrow(
      expect.objectContaining({
        code: 'USAGE',
        message: expect.stringMatching(
          /would need about \d+\.\d+ GiB of memory \(peak while .*\), more than the --memory budget of 2\.00 GiB/,
        ),
        fix: expect.stringMatching(/--memory.*--tuning-tokens/),
      }),
    );
    expect(() => checkMemory({ ...e, budget: 64 * GiB }, { budgetGiven: true, totalBytes: 24 * GiB })).not.toThrow();
  });
});

describe('groupingCandidates within --memory', () => {
  const opts = { heldout: 4096, report: 8192, ratios: [20] };
  const within = (limit: number, grouping: 'auto' | 'all' = 'auto') =>
    groupingCandidates(LLAMA_8B, grouping, undefined, limit, {
      estimate: (c) => memoryEstimate(LLAMA_8B, c, { ...opts, memory: limit }, GiB).peak,
    });

  it("auto leaves out its largest groupings while the run's estimate passes the budget, one basis per layer always kept", () => {
    const full = within(12 * GiB);
    expect(full.fit).toEqual(['layer', 2, 4, 8, 16, 'all']);
    expect(full.skipped).toEqual([]);
    const c = within(8 * GiB);
    expect(c.fit.length).toBeGreaterThan(1);
    expect(c.fit.length).toBeLessThan(6);
    expect([...c.fit, ...c.skipped.map((g) => (g.grouping === 'all' || g.grouping === 'layer' ? g.grouping : Number(g.grouping)))]).toEqual(
      full.fit,
    );
    expect(c.sketched).toEqual(c.fit.filter((g) => g !== 'layer').map(String));
    // What is left fits; each grouping left out names the estimate that put it out.
    expect(memoryEstimate(LLAMA_8B, c, { ...opts, memory: 8 * GiB }, GiB).peak).toBeLessThanOrEqual(8 * GiB);
    for (const g of c.skipped) expect(g.estimated_peak_bytes).toBeGreaterThan(8 * GiB);
    expect(within(GiB / 4).fit).toEqual(['layer']);
    // A grouping asked for by name is never dropped: the run is refused instead (checkMemory).
    expect(within(8 * GiB, 'all').fit).toEqual(['all']);
    // Its exact covariance (16 GiB here) fits a 17 GiB budget, but the run with it (dense
    // eigensolves of p = 32,768) would not: two-level instead of a refusal naming 77 GiB.
    const named = within(17 * GiB, 'all');
    expect(named.sketched).toEqual(['all']);
    expect(memoryEstimate(LLAMA_8B, named, { ...opts, memory: 17 * GiB }, GiB).peak).toBeLessThan(17 * GiB);
    // Where the exact run fits, the exact covariance it stays.
    const small = { layers: 5, kvHeads: 4, headDim: 8 };
    const exact = groupingCandidates(small, 'all', undefined, 8 * GiB, {
      estimate: (c) => memoryEstimate(small, c, { ...opts, memory: 8 * GiB }, GiB).peak,
    });
    expect([exact.fit, exact.sketched]).toEqual([['all'], undefined]);
  });
});

describe('calibrate --memory', () => {
  it('refuses a budget too small before reading any text, writing nothing', async () => {
    const out = join(tempDir('kvtc-mem-'), 'p');
    let stages: string[] = [];
    await expect(
      calibrate({
        modelDir: DEFAULT_MODEL_DIR,
        data: [DEFAULT_CALIBRATION_DIR],
        ratios: [20],
        tokens: 1024,
        heldout: 256,
        report: 256,
        grouping: 'layer',
        seed: 0,
        device: 'cpu',
        out,
        memory: 2 ** 20,
        onProgress: (e) => (stages = [...stages, e.stage]),
      }),
    ).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/more than the --memory budget of 0\.00 GiB/) });
    expect(stages).toEqual(['loading model']);
    expect(existsSync(out)).toBe(false);
  });
});

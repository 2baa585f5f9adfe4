// Calibration through the two-level fit (src/fit/two-level.ts, issue 21) on the bundled model: a
// covariance budget lowered to nothing sends every basis past one layer to the two-level fit,
// with the fit features spilled to disk in float16 between its passes. With R ≥ the features
// nothing is truncated and the profile must measure as the dense covariance's does; with a small
// R the truncation is reported and the error tables count what it loses.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { calibrate, type CalibrateInput } from '../../src/calibrate/calibrate.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { readProfile } from '../../src/profile/read.js';
import { checkSpillSpace } from '../../src/calibrate/feature-spill.js';
import { tempDir } from '../model/helpers.js';

const base = (out: string): CalibrateInput => ({
  modelDir: DEFAULT_MODEL_DIR,
  data: [DEFAULT_CALIBRATION_DIR],
  ratios: [20],
  tokens: 4096,
  heldout: 2048,
  report: 2048,
  grouping: 'all',
  seed: 0,
  device: 'cpu',
  out,
});

describe('calibrate with two-level bases', () => {
  it("--grouping all two-level measures as the dense covariance's profile, and leaves no spill behind", async () => {
    const spillRoot = tempDir('kvtc-spill-root-');
    process.env.KVTC_SPILL_DIR = spillRoot;
    try {
      const dense = await calibrate(base(join(tempDir('kvtc-tl-'), 'dense')));
      const out = join(tempDir('kvtc-tl-'), 'two');
      const two = await calibrate({ ...base(out), covarianceBudget: 1 });
      expect(dense.groupings_sketched).toEqual([]);
      expect(dense.sketched_bases).toBe(0);
      expect(dense.two_level).toBeUndefined();
      expect(two.groupings_sketched).toEqual(['all']);
      expect(two.sketched_bases).toBe(2);
      // 5 layers × 32 features: R = 4096 keeps all 160 columns of each kind, nothing discarded.
      expect(two.two_level!.kinds.map((k) => [k.kind, k.reduced_columns, k.features])).toEqual([
        ['key', 160, 160],
        ['value', 160, 160],
      ]);
      for (const k of two.two_level!.kinds) expect(k.discarded_share).toBeLessThan(1e-12);
      // float16 features of both kinds over all layers (2 × 160), per fit token past the sink.
      const spilled = two.two_level!.spill_bytes / (2 * 320);
      expect(Number.isInteger(spilled)).toBe(true);
      expect(spilled).toBeGreaterThan(two.tokens - 64);
      expect(spilled).toBeLessThanOrEqual(two.tokens);
      expect(readdirSync(spillRoot)).toEqual([]);
      const d = dense.profiles[0];
      const s = two.profiles[0];
      // The same subspace up to the float16 spill's rounding: the same figures within 1%.
      // Measured: ratio 19.933 vs 19.928, key 0.07675 vs 0.07678, value 0.40625 vs 0.40625.
      expect(Math.abs(s.ratio_compressed / d.ratio_compressed - 1)).toBeLessThan(0.01);
      expect(Math.abs(s.rel_error.key / d.rel_error.key - 1)).toBeLessThan(0.01);
      expect(Math.abs(s.rel_error.value / d.rel_error.value - 1)).toBeLessThan(0.01);
      const { manifest, plans } = await readProfile(out);
      expect(manifest.calibration.sketched_groupings).toEqual(['all']);
      expect(plans.map((p) => p.dim)).toEqual([160, 160]);
    } finally {
      delete process.env.KVTC_SPILL_DIR;
    }
  });

  it("'auto' with a small R fits 2, 4 and all layers per basis two-level and reports the truncation", async () => {
    const stages: string[] = [];
    const r = await calibrate({
      ...base(join(tempDir('kvtc-tl-'), 'auto')),
      grouping: 'auto',
      covarianceBudget: 1,
      twoLevelRank: 64,
      onProgress: (e) => stages.push(e.stage),
    });
    expect(r.groupings).toEqual(['layer', '2', '4', 'all']);
    // R = 64 serves the two-level groupings, and 4,096 fit tokens determine every basis.
    expect(r.warnings).toEqual([]);
    // Each two-level basis's eigensolve is named as it starts (minutes each at a large R).
    const solves = stages.filter((x) => / eigensolve over /.test(x));
    expect(solves).toHaveLength(2 * (3 + 2 + 1));
    expect(solves).toContain('two-level fit: key eigensolve over layers 0–4 (64 wide, top 64)');
    expect(solves).toContain('two-level fit: value eigensolve over layers 0–4 (64 wide, top 64)');
    expect(r.groupings_sketched).toEqual(['2', '4', 'all']);
    expect(r.groupings_skipped).toEqual([]);
    // 2 layers per basis: 3 groups; 4: 2 groups; all: 1; keys and values each.
    expect(r.sketched_bases).toBe(2 * (3 + 2 + 1));
    for (const k of r.two_level!.kinds) {
      expect(k.reduced_columns).toBe(64);
      expect(k.discarded_share).toBeGreaterThan(0);
      expect(k.discarded_share).toBeLessThan(1);
    }
    expect(r.profiles[0].grouping_candidates.map((c) => c.grouping)).toEqual(['layer', '2', '4', 'all']);
    for (const c of r.profiles[0].grouping_candidates) {
      expect(Number.isFinite(c.rel_error.key)).toBe(true);
      expect(Number.isFinite(c.rel_error.value)).toBe(true);
    }
    expect(existsSync(r.profiles[0].profile)).toBe(true);
  });

  it('checks the spill directory and its free space before any work', async () => {
    const dir = tempDir('kvtc-spill-check-');
    await expect(checkSpillSpace(1, dir)).resolves.toBeUndefined();
    await expect(checkSpillSpace(2 ** 60, dir)).rejects.toMatchObject({
      code: 'IO_ERROR',
      message: expect.stringMatching(/spills 1073741824\.0 GiB of float16 fit features to .* which has [\d.]+ GiB free/),
      fix: expect.stringMatching(/KVTC_SPILL_DIR/),
    });
    await expect(checkSpillSpace(1, join(dir, 'missing'))).rejects.toMatchObject({
      code: 'IO_ERROR',
      message: expect.stringMatching(/not a writable directory/),
    });
  });

  it('removes its spill folders when the process quits at once (a second Ctrl-C)', () => {
    const root = tempDir('kvtc-spill-exit-');
    const code = [
      "import { FeatureSpill } from './src/calibrate/feature-spill.ts';",
      "import { ParkedCaches } from './src/calibrate/cache-park.ts';",
      `const s = await FeatureSpill.create(${JSON.stringify(root)});`,
      "await s.append('key', new Float32Array(8), 2, 4);",
      `await ParkedCaches.create(${JSON.stringify(root)});`,
      'process.exit(130);',
    ].join('\n');
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8' });
    expect(r.status).toBe(130);
    expect(readdirSync(root)).toEqual([]);
  });
});

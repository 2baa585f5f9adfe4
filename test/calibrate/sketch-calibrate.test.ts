// Calibration from the streaming sketch (src/fit/sketch.ts, issue 21) on the bundled model: a
// covariance budget lowered to nothing forces every basis past one layer onto the sketch, and
// the profile it gives must measure close to the dense path's.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { calibrate, type CalibrateInput } from '../../src/calibrate/calibrate.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { readProfile } from '../../src/profile/read.js';
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

describe('calibrate with sketched bases', () => {
  it("--grouping all from the sketch measures close to the dense covariance's profile", async () => {
    const dense = await calibrate(base(join(tempDir('kvtc-sk-'), 'dense')));
    const out = join(tempDir('kvtc-sk-'), 'sketch');
    const sketched = await calibrate({ ...base(out), covarianceBudget: 1 });
    expect(dense.groupings_sketched).toEqual([]);
    expect(dense.sketched_bases).toBe(0);
    expect(sketched.groupings_sketched).toEqual(['all']);
    expect(sketched.sketched_bases).toBe(2);
    const d = dense.profiles[0];
    const s = sketched.profiles[0];
    // Same target, both on the report split. The sketch keeps the top components (p = 160 features,
    // 120 sketch columns, rank ≤ 96 = what any plan at 20x may store): its error within 5%
    // (relative) of the dense one.
    // Measured: ratio 19.93 vs 19.92, key 0.0768 vs 0.0767, value 0.406 vs 0.407.
    expect(Math.abs(s.ratio_compressed / d.ratio_compressed - 1)).toBeLessThan(0.05);
    expect(Math.abs(s.rel_error.key / d.rel_error.key - 1)).toBeLessThan(0.05);
    expect(Math.abs(s.rel_error.value / d.rel_error.value - 1)).toBeLessThan(0.05);
    const { manifest, plans } = await readProfile(out);
    expect(manifest.calibration.sketched_groupings).toEqual(['all']);
    expect(plans.map((p) => p.dim)).toEqual([160, 160]);
    for (const p of plans) expect(p.rank).toBeLessThanOrEqual(96);
  });

  it("'auto' with no covariance budget fits 2, 4 and all layers per basis from sketches", async () => {
    const r = await calibrate({ ...base(join(tempDir('kvtc-sk-'), 'auto')), grouping: 'auto', covarianceBudget: 1 });
    expect(r.groupings).toEqual(['layer', '2', '4', 'all']);
    expect(r.groupings_sketched).toEqual(['2', '4', 'all']);
    expect(r.groupings_skipped).toEqual([]);
    // 2 layers per basis: 3 groups; 4: 2 groups; all: 1; keys and values each.
    expect(r.sketched_bases).toBe(2 * (3 + 2 + 1));
    expect(r.profiles[0].grouping_candidates.map((c) => c.grouping)).toEqual(['layer', '2', '4', 'all']);
  });
});

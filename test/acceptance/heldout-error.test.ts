// Issue 15's acceptance: the error kvtc reports is not optimistic, and its allocation beats every
// single-type allocation of its own types. The check itself is scripts/heldout-check.ts (its
// errors are computed there, not by kvtc's measure.ts; its single-type bases by ml-matrix).
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { heldoutCheck, type CheckRow } from '../../scripts/heldout-check.js';
import { tempDir } from '../model/helpers.js';

describe('calibrated on part of the inaugural addresses, checked on addresses calibration never read', () => {
  let rows: CheckRow[];
  beforeAll(async () => {
    ({ rows } = await heldoutCheck({ ratios: [2, 8, 20], out: join(tempDir('kvtc-heldout-'), 'p'), checkTokens: 16384, later: false }));
  }, 300_000);

  it("reports errors no more than 5% below the unseen text's, at 2x, 8x and 20x", () => {
    expect(rows.map((r) => r.ratio_target)).toEqual([2, 8, 20]);
    for (const r of rows) {
      expect(r.reported.key, `${r.ratio_target}x keys`).toBeGreaterThanOrEqual(0.95 * r.unseen.key);
      expect(r.reported.value, `${r.ratio_target}x values`).toBeGreaterThanOrEqual(0.95 * r.unseen.value);
      // And the ratio holds on unseen text.
      expect(Math.abs(r.unseen.ratio / r.reported.ratio - 1)).toBeLessThan(0.03);
    }
  });

  it('has a smaller value error than the best single-type allocation at the same raw bits, at every ratio', () => {
    for (const r of rows) {
      expect(r.single_type).toHaveLength(8);
      const best = r.single_type[0];
      expect(r.unseen.value, `${r.ratio_target}x vs ${best.type} ${best.mode}`).toBeLessThanOrEqual(best.value);
    }
  });
});

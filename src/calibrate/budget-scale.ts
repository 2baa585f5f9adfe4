/**
 * The budget-scale search of calibrate: the DP budget counts raw bits, while DEFLATE and the
 * headers move the real ratio, so the scale on every plan's budget is searched until the ratio
 * measured on held-out blobs lands on the target.
 */

export interface BudgetScale {
  scale: number;
  /** The ratio measured at `scale`. */
  ratio: number;
}

/** Steps of the search, and the tolerance |measured / target − 1| that ends it. */
export const BUDGET_SCALE_STEPS = 10;
export const BUDGET_SCALE_TOLERANCE = 0.005;
/** The scale stays within [0.05, 8]. */
const MIN_SCALE = 0.05;
const MAX_SCALE = 8;

/**
 * ratio ≈ k / budget, so step scale ← scale · (measured / target)^γ from scale 1, keeping the
 * closest measurement, and halving γ when a step does not improve (bits are integers, so the
 * map from scale to ratio is a staircase). `measureAt(scale)` measures the ratio of the plans
 * allocated at that scale; `onStep` reports each step before it is measured.
 */
export function searchBudgetScale(
  measureAt: (scale: number) => number,
  target: number,
  onStep?: (step: number, best: BudgetScale) => void,
): BudgetScale {
  let best: BudgetScale = { scale: 1, ratio: measureAt(1) };
  let gamma = 1;
  for (let it = 0; it < BUDGET_SCALE_STEPS && Math.abs(best.ratio / target - 1) > BUDGET_SCALE_TOLERANCE; it++) {
    onStep?.(it, best);
    const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, best.scale * (best.ratio / target) ** gamma));
    const r = measureAt(scale);
    if (Math.abs(r / target - 1) < Math.abs(best.ratio / target - 1)) best = { scale, ratio: r };
    else gamma /= 2;
  }
  return best;
}

/**
 * Encode's range rules for compressed tokens (docs/profile-format.md §6, "Values and range"):
 * finite values, and a norm within the profile's calibrated bound. Raw tokens are checked as
 * raw-section.ts converts them.
 */
import { KvtcError } from '../errors.js';
import { valueDimOf, type KvCache } from '../model/types.js';
import { nonFinite } from './raw-section.js';
import type { BasisPlan } from './types.js';

/**
 * How far a compressed token may stray from what the profile was calibrated on: a token whose
 * feature vector x (one plan's layers and heads) has ‖x‖₂ > ‖μ‖₂ + OUTLIER_FACTOR · √(Σ variances)
 * is refused (KV_OUT_OF_RANGE). ‖x − μ‖ ≥ ‖x‖ − ‖μ‖, and RoPE preserves ‖x‖, so the test reads the
 * cache as stored, the same on every device, and refuses only tokens whose deviation from the
 * mean is more than 16× the calibration RMS deviation. Measured on stories260K (held-out prose,
 * source code, JSON, random characters): (‖x‖ − ‖μ‖)/RMS ≤ 3 for every token. Within the bound,
 * static groups clip to their calibrated range, as the spec says.
 */
export const OUTLIER_FACTOR = 16;

/** The largest ‖x‖ of a compressed token of this plan (OUTLIER_FACTOR); Infinity where unchecked. */
export function planNormBound(p: BasisPlan): number {
  let v = 0;
  for (let j = 0; j < p.variances.length; j++) v += p.variances[j];
  let m = 0;
  for (let j = 0; j < p.mean.length; j++) m += p.mean[j] * p.mean[j];
  // A rank-0 plan keeps nothing (x̂ = μ by design); zero calibrated variance gives no scale.
  return p.rank > 0 && v > 0 ? Math.sqrt(m) + OUTLIER_FACTOR * Math.sqrt(v) : Infinity;
}

/**
 * Range check of plan i's compressed tokens after gatherHeads summed their squares (`norms`):
 * a non-finite value → KV_INVALID; ‖x‖ beyond the plan's bound (OUTLIER_FACTOR) →
 * KV_OUT_OF_RANGE.
 */
export function checkPlanTokens(
  plan: BasisPlan,
  i: number,
  bound: number,
  norms: Float64Array,
  cache: KvCache,
  sink: number,
  n: number,
  source: string,
): void {
  const b2 = bound * bound;
  for (let k = 0; k < n; k++) {
    if (norms[k] <= b2) continue; // false for NaN, so non-finite sums fall through
    const t = sink + k;
    if (!Number.isFinite(norms[k])) {
      const at = locate(cache, plan.kind, plan.layers, t, (v) => !Number.isFinite(v));
      throw nonFinite(source, cache, { ...at, kind: plan.kind, token: t }, at.value);
    }
    const norm = Math.sqrt(norms[k]);
    const at = locate(cache, plan.kind, plan.layers, t);
    const layers = plan.layers;
    throw new KvtcError(
      'KV_OUT_OF_RANGE',
      `${source}: token ${t} (position ${cache.startPosition + t}) is far outside the range the profile was calibrated on: the norm of its ${plan.kind}s in layer${layers.length > 1 ? 's' : ''} ${layers.join(', ')} (plan ${i}) is ${norm.toPrecision(4)}, above the profile's bound ${bound.toPrecision(4)} (‖mean‖ + ${OUTLIER_FACTOR}× the calibration RMS deviation); its largest value is ${at.value} (layer ${at.layer}, head ${at.head}, dim ${at.dim}). Encoding it would clip it to garbage`,
      {
        fix: 'Recalibrate the profile on data representative of this cache (`kvtc calibrate --data ...`), or check the cache: values this far from the calibration data usually mean an overflow or the wrong model.',
        context: {
          source,
          plan: i,
          kind: plan.kind,
          layers,
          token: t,
          position: cache.startPosition + t,
          norm,
          bound,
          layer: at.layer,
          head: at.head,
          dim: at.dim,
          value: at.value,
        },
      },
    );
  }
}

/**
 * Finite check of the compressed tokens no gather reads: layers of rank-0 plans (and any
 * (layer, kind) no plan covers).
 */
export function checkUngathered(plans: BasisPlan[], cache: KvCache, sink: number, n: number, source: string): void {
  const gathered = new Set<string>();
  for (const p of plans) if (p.rank > 0) for (const l of p.layers) gathered.add(`${p.kind}${l}`);
  const { layers, kvHeads, tokens } = cache;
  for (let l = 0; l < layers; l++) {
    for (const kind of ['key', 'value'] as const) {
      if (gathered.has(`${kind}${l}`)) continue;
      const headDim = kind === 'key' ? cache.headDim : valueDimOf(cache);
      const a = (kind === 'key' ? cache.keys : cache.values)[l];
      for (let h = 0; h < kvHeads; h++) {
        for (let i = (h * tokens + sink) * headDim, e = i + n * headDim; i < e; i++) {
          if (!Number.isFinite(a[i]))
            throw nonFinite(source, cache, { layer: l, kind, head: h, token: Math.floor(i / headDim) % tokens, dim: i % headDim }, a[i]);
        }
      }
    }
  }
}

/** The value of token t in the given layers of one kind that `pick` selects (default: the largest magnitude). */
function locate(
  cache: KvCache,
  kind: 'key' | 'value',
  layers: number[],
  t: number,
  pick?: (v: number) => boolean,
): { layer: number; head: number; dim: number; value: number } {
  const { kvHeads, tokens: T } = cache;
  const headDim = kind === 'key' ? cache.headDim : valueDimOf(cache);
  let best = { layer: layers[0], head: 0, dim: 0, value: 0 };
  for (const l of layers) {
    const a = (kind === 'key' ? cache.keys : cache.values)[l];
    for (let h = 0; h < kvHeads; h++) {
      for (let d = 0; d < headDim; d++) {
        const v = a[(h * T + t) * headDim + d];
        if (pick ? pick(v) : Math.abs(v) > Math.abs(best.value)) {
          best = { layer: l, head: h, dim: d, value: v };
          if (pick) return best;
        }
      }
    }
  }
  return best;
}

// Test-only reference (issue 14): the inverse of gatherFeatures, writing features back into a cache.
import { invariant } from '../../src/errors.js';
import type { KvCache, RopeSpec } from '../../src/model/types.js';
import { checkSelection, featureDim, kindHeadDim, type FeatureSelection } from '../../src/fit/features.js';
import { RopeTable } from '../../src/rope/rope-table.js';

/** Inverse of gatherFeatures: writes X [t1-t0, p] into the cache (re-applying RoPE to keys). */
export function scatterFeatures(
  X: Float32Array,
  cache: KvCache,
  sel: FeatureSelection,
  rope: RopeSpec | undefined,
  t0 = 0,
  t1 = cache.tokens,
): void {
  checkSelection(cache, sel, t0, t1, 'scatterFeatures');
  const { kvHeads, tokens } = cache;
  const headDim = kindHeadDim(cache, sel.kind); // values may be wider or narrower than keys (MLA latents)
  const p = featureDim(cache, sel.layers, sel.kind);
  invariant(X.length >= (t1 - t0) * p, `Error in scatterFeatures: X length (${X.length}) < tokens*p (${t1 - t0}*${p})`);
  if (sel.kind === 'key') invariant(rope !== undefined, 'Error in features: keys need a RopeSpec to un-rotate');
  const table = sel.kind === 'key' ? new RopeTable(rope!, cache.headDim) : undefined;
  for (let t = t0; t < t1; t++) {
    table?.at(cache.startPosition + t);
    const row = (t - t0) * p;
    for (let li = 0; li < sel.layers.length; li++) {
      const dst = sel.kind === 'key' ? cache.keys[sel.layers[li]] : cache.values[sel.layers[li]];
      for (let h = 0; h < kvHeads; h++) {
        const so = row + (li * kvHeads + h) * headDim;
        const dOff = (h * tokens + t) * headDim;
        if (table) table.rotate(X, so, dst, dOff, 1);
        else dst.set(X.subarray(so, so + headDim), dOff);
      }
    }
  }
}

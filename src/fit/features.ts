/**
 * Gathers a basis plan's features from a KvCache (and scatters them back).
 *
 * X: Float32Array // [t1 - t0, p] token-major, p = layers.length * kvHeads * hd,
 * feature index (li * kvHeads + h) * hd + d, hd = headDim for keys, valueDim (absent: headDim)
 * for values (MLA latents: the RoPE key and the latent differ in width). Keys are un-rotated while gathering
 * (position of token t = cache.startPosition + t), each layer with its own RoPE (a layer
 * without RoPE is copied as it is).
 */
import { invariant } from '../errors.js';
import { valueDimOf, type KvCache } from '../model/types.js';
import { layerTables, type RopeTable } from '../rope/rope-table.js';
import type { ModelRope, RopeSpec } from '../rope/types.js';
import type { KvKind } from '../codec/types.js';

export interface FeatureSelection {
  kind: KvKind;
  /** Layers concatenated in this order. */
  layers: number[];
}

/** Width of one head of `kind`: headDim for keys, valueDim (absent: headDim) for values. */
export function kindHeadDim(cache: Pick<KvCache, 'headDim' | 'valueDim'>, kind: KvKind): number {
  return kind === 'key' ? cache.headDim : valueDimOf(cache);
}

/** Features per token of a selection: layers × kvHeads × the width of `kind`'s heads (default key). */
export function featureDim(cache: Pick<KvCache, 'kvHeads' | 'headDim' | 'valueDim'>, layers: number[], kind: KvKind = 'key'): number {
  return layers.length * cache.kvHeads * kindHeadDim(cache, kind);
}

export function checkSelection(cache: KvCache, sel: FeatureSelection, t0: number, t1: number, op: string): void {
  invariant(
    Number.isInteger(t0) && Number.isInteger(t1) && 0 <= t0 && t0 <= t1 && t1 <= cache.tokens,
    `Error in ${op}: token range [${t0}, ${t1}) must lie in [0, ${cache.tokens})`,
  );
  for (const l of sel.layers) {
    invariant(Number.isInteger(l) && l >= 0 && l < cache.layers, `Error in ${op}: layer ${l} out of range [0, ${cache.layers})`);
  }
}

/**
 * Copies tokens [t0, t1) of `sel` into X [t1-t0, p] (allocated unless `out` is given).
 * `rope` — each layer's (ModelSpec.rope), or one RopeSpec for every layer — is required for
 * keys and ignored for values.
 */
export function gatherFeatures(
  cache: KvCache,
  sel: FeatureSelection,
  rope: ModelRope | RopeSpec | undefined,
  t0 = 0,
  t1 = cache.tokens,
  out?: Float32Array,
): Float32Array {
  checkSelection(cache, sel, t0, t1, 'gatherFeatures');
  const { kvHeads, tokens } = cache;
  const headDim = kindHeadDim(cache, sel.kind);
  const p = featureDim(cache, sel.layers, sel.kind);
  const n = t1 - t0;
  const X = out ?? new Float32Array(n * p);
  invariant(X.length >= n * p, `Error in gatherFeatures: out length (${X.length}) < tokens*p (${n}*${p})`);
  const tables = sel.kind === 'key' ? ropeTables(rope, cache, sel.layers) : undefined;
  for (let t = t0; t < t1; t++) {
    const row = (t - t0) * p;
    for (let li = 0; li < sel.layers.length; li++) {
      const src = sel.kind === 'key' ? cache.keys[sel.layers[li]] : cache.values[sel.layers[li]];
      const table = tables?.[li]?.at(cache.startPosition + t);
      for (let h = 0; h < kvHeads; h++) {
        const so = (h * tokens + t) * headDim;
        const dOff = row + (li * kvHeads + h) * headDim;
        if (table) table.rotate(src, so, X, dOff, -1);
        else X.set(src.subarray(so, so + headDim), dOff);
      }
    }
  }
  return X;
}

/** The RopeTable of each selected layer (null: no RoPE on that layer). */
function ropeTables(rope: ModelRope | RopeSpec | undefined, cache: KvCache, layers: number[]): (RopeTable | null)[] {
  invariant(rope !== undefined, 'Error in features: keys need a RopeSpec to un-rotate');
  const perLayer: ModelRope = Array.isArray(rope) ? rope : Array.from({ length: cache.layers }, () => rope as RopeSpec);
  invariant(perLayer.length === cache.layers, `Error in features: RoPE for ${perLayer.length} layers, the cache has ${cache.layers}`);
  const all = layerTables(perLayer, cache.headDim, cache.startPosition + cache.tokens);
  return layers.map((l) => all[l]);
}

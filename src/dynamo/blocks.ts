// Tested by test/dynamo/calibrate-export.test.ts.
/**
 * KV cache ↔ kernel rows. The Dynamo kernels compress one block pointer per row, reading
 * `features` = kv_heads · head_dim · tokens_per_block contiguous elements (cuda/kvtc_kernels.cu,
 * kvtc_gather_mean_subtract_kernel reads block[col] for col < features). Which element is where
 * is the serving engine's block layout (lib/kvbm-kernels/README.md): vLLM's NHD chunks are
 * [tokens, heads, head_dim], HND chunks [heads, tokens, head_dim]; an "operational" block's
 * inner dimension is tokens · heads · head_dim. kvtc fits the projection in the order given here
 * (NHD by default), so its rows must match the memory order of the blocks it will see.
 *
 * Blocks are aligned to absolute token positions: block i holds positions [i·B, (i+1)·B). A cache
 * that starts mid-block, and the partial block at its end, leave those tokens outside every row.
 */
import type { KvCache } from '../model/types.js';
import type { KvKind } from '../codec/types.js';

export type BlockLayout = 'NHD' | 'HND';
export const BLOCK_LAYOUTS: readonly BlockLayout[] = ['NHD', 'HND'];

export interface BlockShape {
  kvHeads: number;
  headDim: number;
  /** tokens_per_block (B). */
  blockTokens: number;
  layout: BlockLayout;
}

/** features = kv_heads · head_dim · tokens_per_block. */
export function blockFeatures(s: Pick<BlockShape, 'kvHeads' | 'headDim' | 'blockTokens'>): number {
  return s.kvHeads * s.headDim * s.blockTokens;
}

/** The full blocks of a cache: first token index (in the cache) and count. */
export function fullBlocks(cache: Pick<KvCache, 'tokens' | 'startPosition'>, blockTokens: number): { first: number; count: number } {
  const first = (blockTokens - (cache.startPosition % blockTokens)) % blockTokens;
  const count = cache.tokens > first ? Math.floor((cache.tokens - first) / blockTokens) : 0;
  return { first, count };
}

/** Element offset inside a block of token t, head h, dim d. */
function inBlock(s: BlockShape, t: number, h: number): number {
  return s.layout === 'NHD' ? (t * s.kvHeads + h) * s.headDim : (h * s.blockTokens + t) * s.headDim;
}

/**
 * Walks `count` blocks from cache token `first`: for each (block, token, head), the element
 * offset of that head's head_dim vector in the cache tensor [kv_heads, tokens, head_dim] and in
 * the rows [count, features] (block layout order). gather and scatter copy along these pairs.
 */
function eachHeadVector(
  cache: Pick<KvCache, 'tokens'>,
  s: BlockShape,
  first: number,
  count: number,
  copy: (cacheOff: number, rowOff: number) => void,
): void {
  const p = blockFeatures(s);
  const { kvHeads, headDim } = s;
  const T = cache.tokens;
  for (let b = 0; b < count; b++) {
    for (let t = 0; t < s.blockTokens; t++) {
      const tok = first + b * s.blockTokens + t;
      for (let h = 0; h < kvHeads; h++) copy((h * T + tok) * headDim, b * p + inBlock(s, t, h));
    }
  }
}

/**
 * Rows Float32Array // [count, features] of `count` blocks starting at cache token `first`, for one
 * layer and kind, in the block layout's element order. Keys are taken as stored (RoPE applied).
 */
export function gatherBlockRows(
  cache: KvCache,
  kind: KvKind,
  layer: number,
  s: BlockShape,
  first: number,
  count: number,
  out?: Float32Array,
): Float32Array {
  const X = out ?? new Float32Array(count * blockFeatures(s));
  const src = kind === 'key' ? cache.keys[layer] : cache.values[layer];
  eachHeadVector(cache, s, first, count, (c, r) => X.set(src.subarray(c, c + s.headDim), r));
  return X;
}

/** Inverse of gatherBlockRows: writes the rows back into the cache's tensors. */
export function scatterBlockRows(
  X: Float32Array,
  cache: KvCache,
  kind: KvKind,
  layer: number,
  s: BlockShape,
  first: number,
  count: number,
): void {
  const dst = kind === 'key' ? cache.keys[layer] : cache.values[layer];
  eachHeadVector(cache, s, first, count, (c, r) => dst.set(X.subarray(r, r + s.headDim), c));
}

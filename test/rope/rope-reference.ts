// Test-only references (issue 14): whole-cache RoPE rotation and un-rotation on top of the
// RopeTable that calibration uses per token.
import { invariant } from '../../src/errors.js';
import type { RopeSpec } from '../../src/model/types.js';
import { RopeTable } from '../../src/rope/rope-table.js';

function rotateCache(
  x: Float32Array,
  kvHeads: number,
  tokens: number,
  headDim: number,
  rope: RopeSpec,
  startPosition: number,
  out: Float32Array,
  direction: 1 | -1,
  op: string,
): Float32Array {
  invariant(
    x.length === kvHeads * tokens * headDim,
    `Error in ${op}: keys length (${x.length}) must equal kvHeads*tokens*headDim (${kvHeads}*${tokens}*${headDim})`,
  );
  invariant(out.length === x.length, `Error in ${op}: out length (${out.length}) must equal keys length (${x.length})`);
  const table = new RopeTable(rope, headDim);
  for (let t = 0; t < tokens; t++) {
    table.at(startPosition + t);
    for (let h = 0; h < kvHeads; h++) {
      const off = (h * tokens + t) * headDim;
      table.rotate(x, off, out, off, direction);
    }
  }
  return out;
}

/**
 * Applies RoPE to keys: Float32Array // [kvHeads, tokens, headDim], token t at position
 * startPosition + t. Writes into `out` (default: in place) and returns it.
 */
export function applyRope(
  keys: Float32Array,
  kvHeads: number,
  tokens: number,
  headDim: number,
  rope: RopeSpec,
  startPosition: number,
  out: Float32Array = keys,
): Float32Array {
  return rotateCache(keys, kvHeads, tokens, headDim, rope, startPosition, out, 1, 'applyRope');
}

/** Removes RoPE from keys: Float32Array // [kvHeads, tokens, headDim]; inverse of applyRope. */
export function undoRope(
  keys: Float32Array,
  kvHeads: number,
  tokens: number,
  headDim: number,
  rope: RopeSpec,
  startPosition: number,
  out: Float32Array = keys,
): Float32Array {
  return rotateCache(keys, kvHeads, tokens, headDim, rope, startPosition, out, -1, 'undoRope');
}

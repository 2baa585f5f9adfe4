// Tested by test/rope/rope-table.test.ts.
/**
 * Exact RoPE rotation and un-rotation on captured keys, in float64 angles.
 *
 * Pair i (0 <= i < rotaryDim/2) of a head rotates by angle position * invFreq[i]:
 *   'half':        (x[i], x[i + rotaryDim/2])   (Hugging Face rotate_half)
 *   'interleaved': (x[2i], x[2i + 1])           (GPT-J / llama2.c)
 *   apply: (a, b) -> f·(a cos θ - b sin θ, b cos θ + a sin θ), f = the attention factor
 *   (transformers multiplies cos and sin by attention_scaling); undo: the rotation by -θ, / f.
 * Dims >= rotaryDim are left as they are (partial rotary).
 */
import { invariant } from '../errors.js';
import { ropeInvFreq } from './freqs.js';
import type { RopeSpec } from './types.js';

/** Per-position cos/sin tables for one layer's RoPE; reused across heads (and layers sharing it). */
export class RopeTable {
  readonly invFreq: Float64Array; // [rotaryDim/2]
  readonly half: number;
  readonly cos: Float64Array; // [rotaryDim/2] for the current position
  readonly sin: Float64Array;
  private readonly factor: number;
  private position = Number.NaN;

  /** `seqLen`: startPosition + tokens of the cache (longrope chooses its factors by it). */
  constructor(
    readonly rope: RopeSpec,
    readonly headDim: number,
    seqLen?: number,
  ) {
    invariant(
      rope.rotaryDim % 2 === 0 && rope.rotaryDim > 0 && rope.rotaryDim <= headDim,
      `Error in RopeTable: rotaryDim (${rope.rotaryDim}) must be even and in (0, headDim=${headDim}]`,
    );
    this.invFreq = ropeInvFreq(rope, seqLen);
    this.half = rope.rotaryDim / 2;
    this.cos = new Float64Array(this.half);
    this.sin = new Float64Array(this.half);
    this.factor = rope.attentionFactor ?? 1;
  }

  /** Loads cos/sin of `position` (no-op when already loaded). */
  at(position: number): this {
    if (position === this.position) return this;
    for (let i = 0; i < this.half; i++) {
      const a = position * this.invFreq[i];
      this.cos[i] = Math.cos(a);
      this.sin[i] = Math.sin(a);
    }
    this.position = position;
    return this;
  }

  /**
   * Rotates one head vector src[srcOff .. srcOff+headDim) into dst[dstOff ..) by the loaded
   * position (direction +1 = apply, -1 = undo). src and dst may be the same array and offset.
   */
  rotate(src: Float32Array, srcOff: number, dst: Float32Array, dstOff: number, direction: 1 | -1): void {
    // cos·f and sin·f applied, undone by ÷f (an attention factor of 1 multiplies by nothing).
    this.rotatePairs(src, srcOff, dst, dstOff, direction, direction === 1 ? this.factor : 1 / this.factor);
    if (src !== dst || srcOff !== dstOff) {
      for (let d = this.rope.rotaryDim; d < this.headDim; d++) dst[dstOff + d] = src[srcOff + d];
    }
  }

  private rotatePairs(src: Float32Array, srcOff: number, dst: Float32Array, dstOff: number, direction: 1 | -1, g: number): void {
    const { half, cos, sin } = this;
    if (this.rope.layout === 'half') {
      for (let i = 0; i < half; i++) {
        const a = src[srcOff + i];
        const b = src[srcOff + i + half];
        const c = cos[i];
        const s = direction * sin[i];
        if (g === 1) {
          dst[dstOff + i] = a * c - b * s;
          dst[dstOff + i + half] = b * c + a * s;
        } else {
          dst[dstOff + i] = (a * c - b * s) * g;
          dst[dstOff + i + half] = (b * c + a * s) * g;
        }
      }
    } else {
      for (let i = 0; i < half; i++) {
        const a = src[srcOff + 2 * i];
        const b = src[srcOff + 2 * i + 1];
        const c = cos[i];
        const s = direction * sin[i];
        if (g === 1) {
          dst[dstOff + 2 * i] = a * c - b * s;
          dst[dstOff + 2 * i + 1] = b * c + a * s;
        } else {
          dst[dstOff + 2 * i] = (a * c - b * s) * g;
          dst[dstOff + 2 * i + 1] = (b * c + a * s) * g;
        }
      }
    }
  }
}

/**
 * One RopeTable per distinct layer description of `rope` (layers sharing a description share
 * the table); null for layers without RoPE. `seqLen` = startPosition + tokens of the cache.
 */
export function layerTables(rope: readonly (RopeSpec | null)[], headDim: number, seqLen: number): (RopeTable | null)[] {
  const made = new Map<RopeSpec, RopeTable>();
  return rope.map((r) => {
    if (!r) return null;
    let t = made.get(r);
    if (!t) {
      t = new RopeTable(r, headDim, seqLen);
      made.set(r, t);
    }
    return t;
  });
}

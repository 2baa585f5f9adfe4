/**
 * Exact RoPE rotation and un-rotation on captured keys, in float64 angles.
 *
 * Pair i (0 <= i < rotaryDim/2) of a head rotates by angle position * invFreq[i]:
 *   'half':        (x[i], x[i + rotaryDim/2])   (Hugging Face rotate_half)
 *   'interleaved': (x[2i], x[2i + 1])           (GPT-J / llama2.c)
 *   (a, b) -> (a cos θ - b sin θ, b cos θ + a sin θ); undo uses -θ.
 * Dims >= rotaryDim are left as they are (partial rotary).
 */
import { invariant } from '../errors.js';
import type { RopeSpec } from '../model/types.js';
import { ropeInvFreq } from '../model/rope-freqs.js';

/** Per-position cos/sin tables for one RoPE spec; reused across heads and layers. */
export class RopeTable {
  readonly invFreq: Float64Array; // [rotaryDim/2]
  readonly half: number;
  readonly cos: Float64Array; // [rotaryDim/2] for the current position
  readonly sin: Float64Array;
  private position = Number.NaN;

  constructor(readonly rope: RopeSpec, readonly headDim: number) {
    invariant(rope.rotaryDim % 2 === 0 && rope.rotaryDim > 0 && rope.rotaryDim <= headDim,
      `Error in RopeTable: rotaryDim (${rope.rotaryDim}) must be even and in (0, headDim=${headDim}]`);
    this.invFreq = ropeInvFreq(rope);
    this.half = rope.rotaryDim / 2;
    this.cos = new Float64Array(this.half);
    this.sin = new Float64Array(this.half);
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
    const { half, cos, sin, headDim } = this;
    const rd = this.rope.rotaryDim;
    if (this.rope.layout === 'half') {
      for (let i = 0; i < half; i++) {
        const a = src[srcOff + i];
        const b = src[srcOff + i + half];
        const c = cos[i];
        const s = direction * sin[i];
        dst[dstOff + i] = a * c - b * s;
        dst[dstOff + i + half] = b * c + a * s;
      }
    } else {
      for (let i = 0; i < half; i++) {
        const a = src[srcOff + 2 * i];
        const b = src[srcOff + 2 * i + 1];
        const c = cos[i];
        const s = direction * sin[i];
        dst[dstOff + 2 * i] = a * c - b * s;
        dst[dstOff + 2 * i + 1] = b * c + a * s;
      }
    }
    if (src !== dst || srcOff !== dstOff) {
      for (let d = rd; d < headDim; d++) dst[dstOff + d] = src[srcOff + d];
    }
  }
}


// Tested by test/rope/rope-table.test.ts.
import type { RopeSpec } from './types.js';

/**
 * Inverse frequencies of RoPE, float64, length rotaryDim/2, with rope_scaling applied
 * exactly as transformers' `_compute_llama3_parameters` / linear scaling do.
 * Pair i rotates by angle position * invFreq[i].
 */
export function ropeInvFreq(rope: RopeSpec): Float64Array {
  const half = rope.rotaryDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / rope.theta ** ((2 * i) / rope.rotaryDim);
  const s = rope.scaling;
  if (!s) return inv;
  if (s.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] /= s.factor;
    return inv;
  }
  // llama3: long wavelengths are divided by factor, short ones kept, smooth in between.
  const low = s.lowFreqFactor ?? 1;
  const high = s.highFreqFactor ?? 4;
  const orig = s.originalMaxPositionEmbeddings ?? 8192;
  const lowWavelen = orig / low;
  const highWavelen = orig / high;
  for (let i = 0; i < half; i++) {
    const wavelen = (2 * Math.PI) / inv[i];
    if (wavelen < highWavelen) continue;
    if (wavelen > lowWavelen) {
      inv[i] /= s.factor;
      continue;
    }
    const smooth = (orig / wavelen - low) / (high - low);
    inv[i] = (1 - smooth) * (inv[i] / s.factor) + smooth * inv[i];
  }
  return inv;
}

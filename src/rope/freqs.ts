// Tested by test/rope/freqs.test.ts and test/rope/rope-table.test.ts.
/**
 * Inverse frequencies of RoPE, float64, length rotaryDim/2: pair i of a layer rotates by angle
 * position · invFreq[i]. Each rule is transformers' (src/transformers/modeling_rope_utils.py):
 *   default   `_compute_default_rope_parameters`: 1 / theta^(2i/d)
 *   linear    `_compute_linear_scaling_rope_parameters`: default / factor
 *   llama3    `_compute_llama3_parameters`: wavelengths above original/low_freq_factor / factor,
 *             below original/high_freq_factor kept, smooth in between
 *   yarn      `_compute_yarn_parameters`: find_correction_range(beta_fast, beta_slow, d, theta,
 *             original_max_position_embeddings, truncate) → linear_ramp_factor mask blending
 *             interpolation (default / factor) and extrapolation (default)
 *   longrope  `_compute_longrope_parameters`: 1 / (ext_i · theta^(2i/d)), ext = short_factor or
 *             long_factor by sequence length (longropeUsesLong)
 * (d = rotaryDim.) transformers keeps inv_freq as float32; kvtc keeps float64 (what it always
 * did for default/linear/llama3, so profiles and blobs are unchanged).
 */
import { invariant } from '../errors.js';
import type { RopeScaling, RopeSpec } from './types.js';

/**
 * longrope: whether a cache whose positions end at `seqLen` (exclusive: startPosition + tokens)
 * was rotated with the long factors. transformers' `longrope_frequency_update` switches on the
 * forward pass's max(position_ids) + 1 > original_max_position_embeddings; kvtc reads a cache as
 * produced by one prefill of all of it (see docs/profile-format.md, "RoPE per layer").
 */
export function longropeUsesLong(s: Extract<RopeScaling, { type: 'longrope' }>, seqLen: number): boolean {
  return seqLen > s.originalMaxPositionEmbeddings;
}

/** Whether the frequencies depend on the cache's length (longrope). */
export function lengthDependent(rope: RopeSpec): boolean {
  return rope.scaling?.type === 'longrope';
}

/**
 * Inverse frequencies of `rope`; `seqLen` (startPosition + tokens of the cache) is needed by
 * longrope only.
 */
export function ropeInvFreq(rope: RopeSpec, seqLen?: number): Float64Array {
  const d = rope.rotaryDim;
  const half = d / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / rope.theta ** ((2 * i) / d);
  const s = rope.scaling;
  if (!s) return inv;
  switch (s.type) {
    case 'linear':
      for (let i = 0; i < half; i++) inv[i] /= s.factor;
      return inv;
    case 'llama3':
      return llama3(inv, s);
    case 'yarn':
      return yarn(inv, s, rope.theta, d);
    case 'longrope': {
      invariant(
        seqLen !== undefined && Number.isInteger(seqLen) && seqLen >= 0,
        'Error in ropeInvFreq: longrope needs the cache length (startPosition + tokens)',
      );
      const ext = longropeUsesLong(s, seqLen) ? s.longFactor : s.shortFactor;
      invariant(ext.length === half, `Error in ropeInvFreq: longrope factors have ${ext.length} entries, rotary dim ${d} needs ${half}`);
      for (let i = 0; i < half; i++) inv[i] = 1 / (ext[i] * rope.theta ** ((2 * i) / d));
      return inv;
    }
  }
}

function llama3(inv: Float64Array, s: Extract<RopeScaling, { type: 'llama3' }>): Float64Array {
  const low = s.lowFreqFactor;
  const high = s.highFreqFactor;
  const orig = s.originalMaxPositionEmbeddings;
  const lowWavelen = orig / low;
  const highWavelen = orig / high;
  for (let i = 0; i < inv.length; i++) {
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

/** yarn's correction range: the dims whose wavelength makes `rotations` turns over the original context. */
export function yarnCorrectionRange(s: Extract<RopeScaling, { type: 'yarn' }>, theta: number, d: number): { low: number; high: number } {
  const dim = (rot: number) => (d * Math.log(s.originalMaxPositionEmbeddings / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
  let low = dim(s.betaFast);
  let high = dim(s.betaSlow);
  if (s.truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  return { low: Math.max(low, 0), high: Math.min(high, d - 1) };
}

function yarn(inv: Float64Array, s: Extract<RopeScaling, { type: 'yarn' }>, theta: number, d: number): Float64Array {
  const { low, high: h } = yarnCorrectionRange(s, theta, d);
  const high = low === h ? h + 0.001 : h; // linear_ramp_factor: "Prevent singularity"
  for (let i = 0; i < inv.length; i++) {
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    const extrapolation = 1 - ramp;
    inv[i] = (inv[i] / s.factor) * (1 - extrapolation) + inv[i] * extrapolation;
  }
  return inv;
}

/** The shortest original context among the model's longrope layers (undefined: no longrope layer). */
export function longropeThreshold(rope: readonly (RopeSpec | null)[]): number | undefined {
  let t: number | undefined;
  for (const r of rope) if (r?.scaling?.type === 'longrope') t = Math.min(t ?? Infinity, r.scaling.originalMaxPositionEmbeddings);
  return t;
}

/**
 * The prefill chunk to capture a cache with: `chunk`, except for longrope models, whose graphs
 * pick the factor set per forward pass (max(position_ids) + 1), so a chunked prefill past the
 * original context would rotate early chunks with the short factors and later ones with the long:
 * there the whole text goes in one pass, as the codec reads the cache (longropeUsesLong).
 */
export function ropeSafeChunk(rope: readonly (RopeSpec | null)[], chunk: number): number {
  return longropeThreshold(rope) === undefined ? chunk : Number.MAX_SAFE_INTEGER;
}

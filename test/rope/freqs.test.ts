// Each RoPE frequency rule against values computed here from transformers' formulas
// (src/transformers/modeling_rope_utils.py, written out in this file, not kvtc's code), plus
// hand-worked anchor values.
import { describe, expect, it } from 'vitest';
import { lengthDependent, ropeInvFreq, yarnCorrectionRange } from '../../src/rope/freqs.js';
import type { RopeSpec } from '../../src/rope/types.js';

const close = (got: ArrayLike<number>, want: ArrayLike<number>, rel = 1e-12) => {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i])).toBeLessThanOrEqual(rel * Math.abs(want[i]));
};

/** _compute_default_rope_parameters: 1 / base ** (arange(0, dim, 2) / dim). */
const defaultInv = (base: number, dim: number) => Array.from({ length: dim / 2 }, (_, i) => 1 / base ** ((2 * i) / dim));

describe('RoPE inverse frequencies (transformers modeling_rope_utils.py)', () => {
  it('default: 1 / theta^(2i/d); anchor: theta 10000, d 8 → 1, 0.1, 0.01, 0.001', () => {
    close(ropeInvFreq({ theta: 10000, rotaryDim: 8, layout: 'half' }), [1, 0.1, 0.01, 0.001], 1e-12);
    close(ropeInvFreq({ theta: 500000, rotaryDim: 64, layout: 'half' }), defaultInv(500000, 64));
  });

  it('linear (_compute_linear_scaling_rope_parameters): default / factor', () => {
    close(ropeInvFreq({ theta: 10000, rotaryDim: 8, layout: 'half', scaling: { type: 'linear', factor: 8 } }), [
      1 / 8,
      0.1 / 8,
      0.01 / 8,
      0.001 / 8,
    ]);
  });

  it('llama3 (_compute_llama3_parameters): long wavelengths / factor, short kept, smooth between', () => {
    const factor = 8,
      low = 1,
      high = 4,
      old = 8192,
      base = 500000,
      dim = 128;
    const want = defaultInv(base, dim).map((f) => {
      const wavelen = (2 * Math.PI) / f;
      const lowWavelen = old / low,
        highWavelen = old / high;
      const llama = wavelen > lowWavelen ? f / factor : f; // torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
      const smooth = (old / wavelen - low) / (high - low);
      const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
      return medium ? ((1 - smooth) * llama) / factor + smooth * llama : llama;
    });
    const got = ropeInvFreq({
      theta: base,
      rotaryDim: dim,
      layout: 'half',
      scaling: { type: 'llama3', factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: old },
    });
    close(got, want, 1e-12);
    // the highest frequency is untouched, the lowest divided by 8
    expect(got[0]).toBe(1);
    expect(got[63]).toBeCloseTo(want[63], 20);
    expect(got[63] / defaultInv(base, dim)[63]).toBeCloseTo(1 / 8, 12);
  });

  describe('yarn (_compute_yarn_parameters)', () => {
    /** find_correction_range + linear_ramp_factor + the blend, as transformers writes them. */
    function yarnRef(
      base: number,
      dim: number,
      factor: number,
      orig: number,
      betaFast: number,
      betaSlow: number,
      truncate: boolean,
    ): number[] {
      const findCorrectionDim = (rot: number) => (dim * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(base));
      let low = findCorrectionDim(betaFast);
      let high = findCorrectionDim(betaSlow);
      if (truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, dim - 1);
      if (low === high) high += 0.001;
      return Array.from({ length: dim / 2 }, (_, j) => {
        const ramp = Math.min(Math.max((j - low) / (high - low), 0), 1);
        const extrapolationFactor = 1 - ramp;
        const pos = base ** ((2 * j) / dim);
        return (1 / (factor * pos)) * (1 - extrapolationFactor) + (1 / pos) * extrapolationFactor;
      });
    }
    const spec = (
      o: Partial<{ factor: number; orig: number; fast: number; slow: number; truncate: boolean; theta: number; dim: number }>,
    ): RopeSpec => ({
      theta: o.theta ?? 10000,
      rotaryDim: o.dim ?? 8,
      layout: 'half',
      scaling: {
        type: 'yarn',
        factor: o.factor ?? 4,
        originalMaxPositionEmbeddings: o.orig ?? 16,
        betaFast: o.fast ?? 32,
        betaSlow: o.slow ?? 1,
        truncate: o.truncate ?? true,
      },
    });

    it('anchor (d 8, theta 1e4, original 16, β 32/1, ×4): correction range [0, 1] → pair 0 extrapolated, pairs 1-3 interpolated', () => {
      // find_correction_dim(32) = 8 ln(16 / 64π) / (2 ln 1e4) = -1.099 → floor -2 → 0; (1) = 0.406 → ceil 1
      expect(yarnCorrectionRange(spec({}).scaling as never, 10000, 8)).toEqual({ low: 0, high: 1 });
      close(ropeInvFreq(spec({})), [1, 0.1 / 4, 0.01 / 4, 0.001 / 4], 1e-12);
    });

    for (const [name, o] of [
      ['Qwen3-style: d 128, theta 1e6, original 32768, ×4', { dim: 128, theta: 1e6, orig: 32768, factor: 4 }],
      ['DeepSeek-style β: d 64, theta 1e4, original 4096, ×40, β 32/1', { dim: 64, theta: 10000, orig: 4096, factor: 40 }],
      ['untruncated ramp (truncate false)', { dim: 64, theta: 10000, orig: 4096, factor: 8, truncate: false }],
      ['custom β 16/2', { dim: 32, theta: 50000, orig: 2048, factor: 2, fast: 16, slow: 2 }],
    ] as const) {
      it(name, () => {
        const s = spec(o);
        const y = s.scaling as Extract<NonNullable<RopeSpec['scaling']>, { type: 'yarn' }>;
        close(
          ropeInvFreq(s),
          yarnRef(s.theta, s.rotaryDim, y.factor, y.originalMaxPositionEmbeddings, y.betaFast, y.betaSlow, y.truncate),
          1e-12,
        );
      });
    }
  });

  describe('longrope (_compute_longrope_parameters, longrope_frequency_update)', () => {
    const short = [1, 1.1, 1.3, 2];
    const long = [1, 3, 9, 27];
    const s: RopeSpec = {
      theta: 10000,
      rotaryDim: 8,
      layout: 'half',
      scaling: { type: 'longrope', shortFactor: short, longFactor: long, originalMaxPositionEmbeddings: 64 },
    };
    it('inv_freq = 1 / (ext · theta^(2i/d)); short factors up to original_max_position_embeddings, long beyond', () => {
      const ref = (ext: number[]) => ext.map((e, i) => 1 / (e * 10000 ** ((2 * i) / 8)));
      close(ropeInvFreq(s, 64), ref(short));
      close(ropeInvFreq(s, 1), ref(short));
      close(ropeInvFreq(s, 65), ref(long));
      expect(lengthDependent(s)).toBe(true);
      expect(lengthDependent({ theta: 1, rotaryDim: 2, layout: 'half' })).toBe(false);
    });
    it('needs the cache length', () => {
      expect(() => ropeInvFreq(s)).toThrow(/longrope needs the cache length/);
    });
  });
});

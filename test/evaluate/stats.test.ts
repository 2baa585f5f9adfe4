import { describe, expect, it } from 'vitest';
import {
  accuracy,
  agreementRate,
  argmax,
  groupAccuracy,
  klDivergence,
  logSoftmax,
  meanStderr,
  mulberry32,
  pairedBootstrapDelta,
  quantile,
  sampleStd,
  softmax,
} from '../../src/evaluate/stats.js';

/** Synthetic paired runs: baseline ~ Bernoulli(pBase); the candidate loses a correct answer
 * with probability pLose and gains a wrong one with pGain. True delta = -pBase·pLose + (1-pBase)·pGain. */
function pairedRuns(n: number, seed: number, pBase: number, pLose: number, pGain: number): [Uint8Array, Uint8Array] {
  const rng = mulberry32(seed);
  const a = new Uint8Array(n);
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    a[i] = rng() < pBase ? 1 : 0;
    b[i] = a[i] ? (rng() < pLose ? 0 : 1) : rng() < pGain ? 1 : 0;
  }
  return [a, b];
}

describe('accuracy and standard error (harness mean_stderr)', () => {
  it('uses the sample std (n − 1) over √n', () => {
    expect(sampleStd([1, 0, 1, 1])).toBeCloseTo(0.5, 15);
    expect(accuracy([true, false, true, true])).toEqual({ n: 4, correct: 3, accuracy: 0.75, stderr: 0.25 });
    expect(meanStderr([2, 4, 4, 4, 5, 5, 7, 9])).toBeCloseTo(Math.sqrt(32 / 7) / Math.sqrt(8), 14);
  });

  it('micro-averages groups over questions with the pooled stderr', () => {
    const a = accuracy(Array.from({ length: 10 }, (_, i) => i < 5));
    const b = accuracy(Array.from({ length: 30 }, (_, i) => i < 27));
    const g = groupAccuracy([a, b]);
    expect(g.n).toBe(40);
    expect(g.correct).toBe(32);
    expect(g.accuracy).toBe(0.8);
    const pooledVar = (9 * a.stderr ** 2 * 10 + 29 * b.stderr ** 2 * 30) / (40 - 2);
    expect(g.stderr).toBeCloseTo(Math.sqrt(pooledVar / 40), 15);
    // pooled var of the two subtasks' own samples: (9·s_a² + 29·s_b²) / 38
    expect(g.stderr ** 2 * 40).toBeCloseTo(
      (9 * sampleStd(Array.from({ length: 10 }, (_, i) => +(i < 5))) ** 2 +
        29 * sampleStd(Array.from({ length: 30 }, (_, i) => +(i < 27))) ** 2) /
        38,
      12,
    );
  });
});

describe('pairedBootstrapDelta', () => {
  it('is exactly [0, 0] for identical runs', () => {
    const [a] = pairedRuns(500, 1, 0.6, 0, 0);
    expect(pairedBootstrapDelta(a, a, { resamples: 2000 })).toMatchObject({ delta: 0, lo: 0, hi: 0, n: 500 });
  });

  it('contains the true delta on synthetic data', () => {
    const [a, b] = pairedRuns(4000, 7, 0.6, 0.1, 0.05); // true delta = -0.06 + 0.02 = -0.04
    const r = pairedBootstrapDelta(a, b, { seed: 3 });
    expect(r.resamples).toBe(10_000);
    expect(r.lo).toBeLessThan(-0.04);
    expect(r.hi).toBeGreaterThan(-0.04);
    expect(r.lo).toBeLessThanOrEqual(r.delta);
    expect(r.hi).toBeGreaterThanOrEqual(r.delta);
    expect(r.hi).toBeLessThan(0); // a real regression is detected
  });

  it('covers the true delta about 95% of the time', () => {
    let covered = 0;
    const trials = 200;
    for (let t = 0; t < trials; t++) {
      const [a, b] = pairedRuns(400, 1000 + t, 0.5, 0.1, 0.1); // true delta 0
      const r = pairedBootstrapDelta(a, b, { resamples: 1000, seed: t });
      if (r.lo <= 0 && r.hi >= 0) covered++;
    }
    expect(covered / trials).toBeGreaterThan(0.89);
    expect(covered / trials).toBeLessThan(0.99);
  });

  it('is deterministic given the seed', () => {
    const [a, b] = pairedRuns(300, 5, 0.5, 0.2, 0.1);
    expect(pairedBootstrapDelta(a, b, { seed: 42, resamples: 500 })).toEqual(pairedBootstrapDelta(a, b, { seed: 42, resamples: 500 }));
    expect(pairedBootstrapDelta(a, b, { seed: 43, resamples: 500 }).lo).not.toBe(
      pairedBootstrapDelta(a, b, { seed: 42, resamples: 500 }).lo,
    );
  });

  it('rejects runs of different lengths', () => {
    expect(() => pairedBootstrapDelta([1, 0], [1])).toThrowError(/runs have 2 and 1 questions/);
  });

  it('interpolates quantiles like numpy', () => {
    expect(quantile([1, 2, 3, 4], 0.5)).toBe(2.5);
    expect(quantile([1, 2, 3, 4], 0.025)).toBeCloseTo(1.075, 15);
  });
});

describe('answer distributions', () => {
  it('agreement rate counts equal predictions', () => {
    expect(agreementRate([0, 1, 2, 3], [0, 1, 3, 3])).toBe(0.75);
  });

  it('log-softmax is normalised and stable for large log-likelihoods', () => {
    const ls = logSoftmax([1000, 1001, 999, -Infinity]);
    expect(ls.every((v) => !Number.isNaN(v))).toBe(true);
    expect(Array.from(softmax([1000, 1001, 999, -Infinity])).reduce((s, v) => s + v, 0)).toBeCloseTo(1, 14);
    expect(ls[3]).toBe(-Infinity);
    expect(argmax([-3, -1, -1, -2])).toBe(1);
  });

  it('KL of identical distributions is 0, and invariant to a shift of the log-likelihoods', () => {
    const ll = [-2.3, -0.7, -5.1, -1.2];
    expect(klDivergence(ll, ll)).toBe(0);
    expect(
      klDivergence(
        ll,
        ll.map((v) => v - 17),
      ),
    ).toBeCloseTo(0, 12);
  });

  it('KL matches the closed form', () => {
    const p = [0.5, 0.5];
    const q = [0.25, 0.75];
    const expected = 0.5 * Math.log(0.5 / 0.25) + 0.5 * Math.log(0.5 / 0.75);
    expect(klDivergence(p.map(Math.log), q.map(Math.log))).toBeCloseTo(expected, 14);
    expect(klDivergence([0, -Infinity], [Math.log(0.9), Math.log(0.1)])).toBeCloseTo(-Math.log(0.9), 14);
  });
});

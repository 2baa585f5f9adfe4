import { describe, expect, it } from 'vitest';
import { CovarianceAccumulator, JsGramKernel, OrtGramKernel } from '../../src/fit/covariance.js';
import { covarianceTwoPass } from './covariance-reference.js';
import { rng } from '../codec/rng.js';

function data(tokens: number, p: number, offset: number, seed: number): Float32Array {
  const { normal } = rng(seed);
  const X = new Float32Array(tokens * p);
  // correlated features on top of a large common offset (cancellation bait)
  for (let t = 0; t < tokens; t++) {
    const z = normal();
    for (let i = 0; i < p; i++) X[t * p + i] = offset + i + z * (1 + i / p) + 0.3 * normal();
  }
  return X;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('CovarianceAccumulator', () => {
  it('equals a two-pass float64 computation across uneven chunks (js kernel)', async () => {
    const p = 37,
      tokens = 1000;
    const X = data(tokens, p, 1000, 1);
    const acc = new CovarianceAccumulator(p, new JsGramKernel());
    let t = 0;
    for (const n of [1, 300, 77, 622]) {
      await acc.add(X.subarray(t * p, (t + n) * p), n);
      t += n;
    }
    const got = acc.finish();
    const ref = covarianceTwoPass(X, tokens, p);
    expect(got.count).toBe(tokens);
    expect(maxAbsDiff(got.mean, ref.mean)).toBeLessThan(1e-9);
    expect(maxAbsDiff(got.cov, ref.cov)).toBeLessThan(1e-9);
    for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) expect(got.cov[i * p + j]).toBe(got.cov[j * p + i]);
  });

  it('ONNX Runtime float32 Gram matches to float32 accuracy', async () => {
    const p = 64,
      tokens = 2500;
    const X = data(tokens, p, 500, 2);
    const kernel = await OrtGramKernel.create(p, { maxTokens: 512 });
    const acc = new CovarianceAccumulator(p, kernel);
    await acc.add(X, tokens);
    await kernel.dispose();
    const got = acc.finish();
    const ref = covarianceTwoPass(X, tokens, p);
    expect(maxAbsDiff(got.mean, ref.mean)).toBeLessThan(1e-9);
    // variances are ~1..4; float32 partial sums of centred chunks
    expect(maxAbsDiff(got.cov, ref.cov)).toBeLessThan(1e-4);
  });

  it('refuses to finish with no data', () => {
    expect(() => new CovarianceAccumulator(4).finish()).toThrow(/no tokens/);
  });
});

/**
 * The truncated Dynamo fit (src/dynamo/fit.ts dynamoFitComponents, dynamoEigen, completeRows):
 * the component bounds, the eigenpairs against the dense solver, the tables on k columns against
 * the first k columns of the full tables, and on the bundled model the measured held-out error of
 * the truncated fit against the full dense fit (calibrateDynamo's fullBasis), with the export of
 * a truncated profile run through the emulated kernels reproducing what kvtc reported.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { calibrateDynamo, selectSequences, sequenceLength, type CalibrateDynamoResult } from '../../src/dynamo/calibrate-dynamo.js';
import { measureDynamo } from '../../src/dynamo/dynamo-codec.js';
import { exportDynamo, loadDynamoExport } from '../../src/dynamo/export.js';
import {
  allocateDynamo,
  completeRowsSteps,
  dynamoEigen,
  dynamoFitComponents,
  dynamoGranule,
  dynamoMaxComponents,
  intxIndex,
  planDynamoBasis,
  prepareDynamoBasis,
  runStepsInJs,
} from '../../src/dynamo/fit.js';
import { symmetricEigen } from '../../src/fit/eigen.js';
import { RANDOMIZED_MAX_RANK_FRACTION } from '../../src/fit/eigen-randomized.js';
import { gemmABt, transpose } from '../../src/math/gemm.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { rng } from '../codec/rng.js';
import { tempDir } from '../model/helpers.js';

/** Rows [n, p] with a falling spectrum (feature j of the latent scaled 0.9^j), and their covariance. */
function data(n: number, p: number, seed: number): { X: Float32Array; cov: Float64Array; mean: Float64Array } {
  const { normal } = rng(seed);
  const mix = Float64Array.from({ length: p * p }, () => normal() / Math.sqrt(p));
  const X = new Float32Array(n * p);
  for (let t = 0; t < n; t++) {
    const z = Float64Array.from({ length: p }, (_, j) => normal() * 4 * 0.9 ** j);
    for (let i = 0; i < p; i++) {
      let s = 0.5 * (i % 3); // a mean
      for (let j = 0; j < p; j++) s += mix[i * p + j] * z[j];
      X[t * p + i] = s;
    }
  }
  const mean = new Float64Array(p);
  for (let t = 0; t < n; t++) for (let i = 0; i < p; i++) mean[i] += X[t * p + i] / n;
  const Y = Float64Array.from({ length: n * p }, (_, i) => X[i] - mean[i % p]);
  const cov = gemmABt(transpose(Y, n, p), transpose(Y, n, p), new Float64Array(p * p), p, p, n).map((v) => v / n);
  return { X, cov, mean };
}

/** max |VᵀV − I| over the k columns of V [p, k]. */
function offOrthonormal(V: Float64Array, p: number, k: number): number {
  const G = gemmABt(transpose(V, p, k), transpose(V, p, k), new Float64Array(k * k), k, k, p);
  let worst = 0;
  for (let a = 0; a < k; a++) for (let b = 0; b < k; b++) worst = Math.max(worst, Math.abs(G[a * k + b] - (a === b ? 1 : 0)));
  return worst;
}

describe('how many components the truncated fit keeps', () => {
  it('the budget bound: 8·⌊2p/r⌋ / min(8, smallest IntX width) at the smallest ratio, capped at p', () => {
    // SmolLM2-135M, 16-token blocks: p = 3072, 384 bytes per block at 16x, int2 the cheapest
    expect(dynamoMaxComponents(3072, [16, 20])).toBe(1536);
    expect(dynamoMaxComponents(3072, [8])).toBe(3072);
    expect(dynamoMaxComponents(3072, [16], [4, 8])).toBe(768);
    expect(dynamoMaxComponents(3072, [16], [1, 2, 4, 8])).toBe(3072);
    expect(dynamoMaxComponents(3072, [64], [8])).toBe(96); // FP8 and Int8 cost a byte each
  });

  it('components rounded up to the granule; solved = min(components, fit blocks − 1)', () => {
    expect(dynamoGranule(3072)).toBe(48);
    expect(dynamoFitComponents(3072, 256, [16])).toEqual({ components: 1536, solved: 255 });
    expect(dynamoFitComponents(3072, 4096, [16])).toEqual({ components: 1536, solved: 1536 });
    // p = 512 at 12x: ⌊1024/12⌋ = 85 bytes → 340 components → 344 (granule 8)
    expect(dynamoFitComponents(512, 1000, [12, 16])).toEqual({ components: 344, solved: 344 });
    expect(dynamoFitComponents(512, 1, [64])).toEqual({ components: 64, solved: 1 });
  });
});

describe('dynamoEigen and completeRows', () => {
  it('completeRows keeps the given rows, adds orthonormal rows orthogonal to them, the largest-variance axis first', () => {
    const p = 40;
    const r = 6;
    const k = 20;
    const { cov } = data(200, p, 3);
    const e = symmetricEigen(cov, p);
    const diag = Float64Array.from({ length: p }, (_, i) => cov[i * p + i]);
    const W = runStepsInJs(completeRowsSteps(e.vectorsT, r, k, p, diag));
    expect(offOrthonormal(transpose(W, k, p), p, k)).toBeLessThan(1e-12);
    for (let i = 0; i < r * p; i++) expect(Math.abs(W[i] - e.vectorsT[i])).toBeLessThan(1e-12);
    // row r: the top-variance axis with its part along the r rows removed, normalized
    const top = diag.indexOf(Math.max(...diag));
    const v = new Float64Array(p);
    v[top] = 1;
    for (let j = 0; j < r; j++) {
      const d = e.vectorsT[j * p + top];
      for (let i = 0; i < p; i++) v[i] -= d * e.vectorsT[j * p + i];
    }
    const n = Math.hypot(...v);
    for (let i = 0; i < p; i++) expect(Math.abs(W[r * p + i] - v[i] / n)).toBeLessThan(1e-10);
  });

  // p ≥ LARGE_EIGEN_MIN_P: the products run on ONNX Runtime, as in calibration
  const p = 400;
  const full = data(600, p, 5);
  const dense = symmetricEigen(full.cov, p);
  it.each([
    [120, 'randomized'],
    [Math.ceil(RANDOMIZED_MAX_RANK_FRACTION * p) + 16, 'dense-truncated'],
  ] as const)('full rank, k = %i: the %s top-k eigenpairs of the dense solve', async (k, solver) => {
    const e = await dynamoEigen(full.cov, p, k);
    expect(e.solver).toBe(solver);
    expect(e.values.length).toBe(k);
    expect(offOrthonormal(e.vectors, p, k)).toBeLessThan(1e-10);
    // the leading eigenpairs (well separated: the spectrum falls by 0.81 per component)
    for (let j = 0; j < 10; j++) {
      expect(Math.abs(e.values[j] / dense.values[j] - 1)).toBeLessThan(1e-8);
      let d = 0;
      for (let i = 0; i < p; i++) d += e.vectors[i * k + j] * dense.vectors[i * p + j];
      expect(Math.abs(Math.abs(d) - 1)).toBeLessThan(1e-8);
    }
  });

  it('rank-deficient (n = 50 blocks): the top n − 1 solved span the whole range, the completion has eigenvalue 0', async () => {
    const n = 50;
    const few = data(n, p, 7);
    const e = await dynamoEigen(few.cov, p, 200, { solved: n - 1 });
    expect(e.solver).toBe('randomized+completed');
    expect(offOrthonormal(e.vectors, p, 200)).toBeLessThan(1e-10);
    const d = symmetricEigen(few.cov, p);
    for (let j = 0; j < n - 1; j++) expect(Math.abs(e.values[j] - d.values[j])).toBeLessThan(1e-9 * d.values[0]);
    for (let j = n - 1; j < 200; j++) expect(e.values[j]).toBe(0);
    // trace(Vᵀ·cov·V) over the k columns = trace(cov): nothing of the range is left out
    const CV = gemmABt(few.cov, transpose(e.vectors, p, 200), new Float64Array(p * 200), p, 200, p);
    let got = 0;
    let want = 0;
    for (let i = 0; i < p; i++) {
      want += few.cov[i * p + i];
      for (let c = 0; c < 200; c++) got += e.vectors[i * 200 + c] * CV[i * 200 + c];
    }
    expect(Math.abs(got / want - 1)).toBeLessThan(1e-10);
  });
});

describe('tables on k columns against the full tables', () => {
  it('first k columns identical, residual = dropped energy beyond k, same plan and error at a budget within k', () => {
    const p = 64;
    const H = 96;
    const fit = data(400, p, 11);
    // held-out: the next H rows of the same source (data draws the mixing first, then the rows)
    const held = { X: data(400 + H, p, 11).X.subarray(400 * p) };
    const e = symmetricEigen(fit.cov, p);
    const k = 32;
    const cut = { values: e.values.slice(0, k), vectors: transpose(e.vectorsT.subarray(0, k * p), k, p) };
    const args = { kind: 'key' as const, layer: 0, features: p, mean: fit.mean, heldout: held.X, heldoutRows: H, sampleRows: H };
    const tFull = prepareDynamoBasis({ ...args, eigen: e });
    const tCut = prepareDynamoBasis({ ...args, eigen: cut });
    expect(tFull.residual).toBe(0);
    expect(tCut.tables.dim).toBe(k);
    expect(tCut.tables.granule).toBe(tFull.tables.granule);
    expect(Array.from(tCut.tables.none)).toEqual(Array.from(tFull.tables.none.subarray(0, k)));
    expect(Array.from(tCut.tables.staticErr)).toEqual(Array.from(tFull.tables.staticErr.subarray(0, k)));
    const g = tCut.tables.granule;
    for (let s = 0; s < k / g; s++)
      for (let m = 1; m <= tCut.tables.maxGranules && s * g + m * g <= k; m++)
        for (let b = 0; b < tCut.tables.intBits.length; b++)
          expect(tCut.tables.dynamicErr[intxIndex(tCut.tables, s, m, b)]).toBe(tFull.tables.dynamicErr[intxIndex(tFull.tables, s, m, b)]);
    let beyond = 0;
    for (let j = k; j < p; j++) beyond += tFull.tables.none[j];
    expect(Math.abs(tCut.residual / beyond - 1)).toBeLessThan(1e-4); // float32 coefficients
    // 16 bytes per block store at most 64 int2 components; at 8 bytes, 32 = k
    for (const budget of [4, 8]) {
      const a = planDynamoBasis(tFull, budget);
      const b = planDynamoBasis(tCut, budget);
      expect(b.ranges).toEqual(a.ranges);
      expect(b.pca_components).toBe(a.pca_components);
      expect(Array.from(b.projection)).toEqual(Array.from(a.projection));
      const errFull = allocateDynamo(tFull.tables, budget).error;
      const errCut = allocateDynamo(tCut.tables, budget).error + tCut.residual;
      expect(Math.abs(errCut / errFull - 1)).toBeLessThan(1e-4);
    }
  });
});

describe('bundled model, 16-token blocks (512 features): truncated fit against the full dense fit', () => {
  const B = 16;
  const root = tempDir('kvtc-dynamo-trunc-');
  const run = (tokens: number, ratios: number[], fullBasis: boolean, out: string) =>
    calibrateDynamo({
      modelDir: DEFAULT_MODEL_DIR,
      data: [DEFAULT_CALIBRATION_DIR],
      ratios,
      tokens,
      heldout: 1024,
      blockTokens: B,
      chunk: 256,
      seed: 0,
      device: 'cpu',
      out: join(root, out),
      force: true,
      fullBasis,
    });
  const relDiff = (a: number, b: number) => Math.abs(a / b - 1);

  // 8,192 fit tokens = 512 blocks = the features: a full-rank fit; at 16x the budget bound
  // (256 components) applies, so the randomized solver fits the top 256.
  let trunc: CalibrateDynamoResult;
  let dense: CalibrateDynamoResult;
  beforeAll(async () => {
    trunc = await run(8192, [16], false, 't16');
    dense = await run(8192, [16], true, 'd16');
  }, 600_000);

  it('full rank: the same bytes and the measured error within 0.1% of the dense fit, per layer', () => {
    expect(trunc.blocks_fit).toBe(512);
    expect(trunc.components_fitted).toBe(256);
    expect(trunc.components_solved).toBe(256);
    expect(trunc.eigen_solver).toBe('randomized');
    expect(dense.components_fitted).toBe(512);
    const [t, d] = [trunc.profiles[0], dense.profiles[0]];
    expect(t.bytes_per_block).toBe(d.bytes_per_block);
    expect(t.ratio_rows).toBe(d.ratio_rows);
    // measured on the means over layers: 3e-5 (K) and 7e-5 (V) relative
    for (let l = 0; l < 5; l++) {
      expect(relDiff(t.rel_error.key_per_layer[l], d.rel_error.key_per_layer[l])).toBeLessThan(1e-3);
      expect(relDiff(t.rel_error.value_per_layer[l], d.rel_error.value_per_layer[l])).toBeLessThan(1e-3);
    }
    expect(trunc.seconds.eigen).toBeGreaterThan(0);
    expect(trunc.seconds.error_tables).toBeGreaterThan(0);
  });

  it('rank-deficient (2,048 fit tokens = 128 blocks) at 8x: the completed fit is no worse than the dense one', async () => {
    const t = await run(2048, [8], false, 't8');
    const d = await run(2048, [8], true, 'd8');
    expect(t.components_fitted).toBe(512);
    expect(t.components_solved).toBe(127);
    expect(t.eigen_solver).toBe('randomized+completed');
    expect(t.warnings.join('\n')).toMatch(/128 calibration blocks .* rank < 128/);
    const [a, b] = [t.profiles[0], d.profiles[0]];
    expect(a.bytes_per_block).toBe(b.bytes_per_block);
    // measured: K 0.153 vs 0.161, V 0.559 vs 0.564 (the dense solver's null vectors are arbitrary)
    expect(a.rel_error.key).toBeLessThan(b.rel_error.key * 1.01);
    expect(a.rel_error.value).toBeLessThan(b.rel_error.value * 1.01);
  }, 600_000);

  it("the truncated profile's export, run through the emulated kernels, reproduces the error and ratio kvtc reported", async () => {
    const exportDir = join(root, 'export');
    await exportDynamo(trunc.profiles[0].profile, exportDir, { force: true });
    const { setup } = await loadDynamoExport(exportDir, { tokensPerBlock: B });
    for (const b of setup.bases) expect(b.config.pca_components).toBeLessThanOrEqual(256);
    const model = await loadModel(DEFAULT_MODEL_DIR);
    const held: KvCache[] = [];
    try {
      const { split } = await selectSequences(model.tokenizer, [DEFAULT_CALIBRATION_DIR], {
        seqLen: sequenceLength(model.spec.maxPositions, B),
        tokens: 8192,
        heldout: 1024,
        seed: 0,
        blockTokens: B,
      });
      const runner = new ModelRunner(model);
      for (const ids of split.heldout) held.push((await runner.prefill(ids, { chunk: 256 })).cache);
    } finally {
      await model.session.release();
    }
    const m = measureDynamo(setup, held);
    const r = trunc.profiles[0];
    expect(m.ratioRows).toBeCloseTo(r.ratio_rows, 12);
    expect(m.ratioCalls).toBeCloseTo(r.ratio_calls, 12);
    for (let l = 0; l < 5; l++) {
      expect(m.relKey[l]).toBeCloseTo(r.rel_error.key_per_layer[l], 12);
      expect(m.relValue[l]).toBeCloseTo(r.rel_error.value_per_layer[l], 12);
    }
  }, 600_000);
});

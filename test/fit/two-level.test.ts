// The two-level fit's pieces (src/fit/two-level.ts) against direct computations: the layout keeps
// the globally largest eigenvalues; with every column kept, the reduced covariance's eigenvalues
// are the full covariance's and the lifted vectors span the same space; ReducedGram (ONNX Runtime,
// float16 input) matches the reduced covariance computed in float64 from the same rounded rows.
import { describe, expect, it } from 'vitest';
import { floatArrayToHalf, halfArrayToFloat } from '../../src/io/fp16.js';
import { symmetricEigen } from '../../src/fit/eigen.js';
import { invariant } from '../../src/errors.js';
import { covarianceBlock, groupColumns, liftVectors, ReducedGram, reducedLayout, type ReducedLayout } from '../../src/fit/two-level.js';
import { mulberry32 } from '../../src/random.js';

/** Features X [n, L·p] with a per-layer spectrum and correlations across layers, seeded. */
function features(n: number, L: number, p: number, seed: number): Float64Array {
  const rand = mulberry32(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const P = L * p;
  const shared = 4;
  const X = new Float64Array(n * P);
  for (let t = 0; t < n; t++) {
    const z = Array.from({ length: shared }, normal);
    for (let l = 0; l < L; l++)
      for (let i = 0; i < p; i++) {
        // Layer l's scale grows with l; direction i decays; a shared low-rank part couples the layers.
        let v = (1 + l) * normal() * (i + 1) ** -0.8;
        for (let s = 0; s < shared; s++) v += 0.5 * z[s] * Math.sin((s + 1) * (i + 1) + l);
        X[t * P + l * p + i] = v + 0.1 * l;
      }
  }
  return X;
}

function covariance(X: Float64Array, n: number, P: number): { cov: Float64Array; mean: Float64Array } {
  const mean = new Float64Array(P);
  for (let t = 0; t < n; t++) for (let i = 0; i < P; i++) mean[i] += X[t * P + i] / n;
  const cov = new Float64Array(P * P);
  for (let t = 0; t < n; t++)
    for (let i = 0; i < P; i++) {
      const a = X[t * P + i] - mean[i];
      for (let j = 0; j < P; j++) cov[i * P + j] += (a * (X[t * P + j] - mean[j])) / n;
    }
  return { cov, mean };
}

/** Per-layer covariance blocks, their eigenpairs and traces. */
function perLayer(cov: Float64Array, L: number, p: number) {
  const P = L * p;
  return Array.from({ length: L }, (_, l) => {
    const c = new Float64Array(p * p);
    for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) c[i * p + j] = cov[(l * p + i) * P + l * p + j];
    let tr = 0;
    for (let i = 0; i < p; i++) tr += c[i * p + i];
    return { ...symmetricEigen(c, p), trace: tr };
  });
}

/** C_Z = Bᵀ·C·B for B = blockdiag(U_l[:, :r_l]), in float64. */
function reducedFromFull(cov: Float64Array, L: number, p: number, layers: ReturnType<typeof perLayer>, ranks: number[]): Float64Array {
  const P = L * p;
  const R = ranks.reduce((a, b) => a + b, 0);
  const B = new Float64Array(P * R);
  let c0 = 0;
  for (let l = 0; l < L; l++) {
    for (let i = 0; i < p; i++) for (let c = 0; c < ranks[l]; c++) B[(l * p + i) * R + c0 + c] = layers[l].vectors[i * p + c];
    c0 += ranks[l];
  }
  const CB = new Float64Array(P * R);
  for (let i = 0; i < P; i++) for (let k = 0; k < P; k++) for (let j = 0; j < R; j++) CB[i * R + j] += cov[i * P + k] * B[k * R + j];
  const out = new Float64Array(R * R);
  for (let i = 0; i < R; i++) for (let k = 0; k < P; k++) for (let j = 0; j < R; j++) out[i * R + j] += B[k * R + i] * CB[k * R + j];
  return out;
}

/** liftVectors in plain loops (float64 sums), the reference the ONNX Runtime products are checked against. */
function liftVectorsReference(
  layout: ReducedLayout,
  layers: number[],
  vectors: (Float64Array | Float32Array)[],
  vectorCols: number[],
  W: Float64Array,
  k: number,
): Float32Array {
  const p = layout.layerDim;
  const V = new Float32Array(layers.length * p * k);
  const row = new Float64Array(k);
  let wRow = 0;
  for (const [li, l] of layers.entries()) {
    const r = layout.ranks[l];
    const U = vectors[l];
    const uc = vectorCols[l];
    invariant(uc >= r, `Error in liftVectorsReference: layer ${l} has ${uc} eigenvectors, the layout keeps ${r}`);
    for (let i = 0; i < p; i++) {
      row.fill(0);
      for (let c = 0; c < r; c++) {
        const u = U[i * uc + c];
        if (u === 0) continue;
        const w = (wRow + c) * k;
        for (let j = 0; j < k; j++) row[j] += u * W[w + j];
      }
      V.set(row, (li * p + i) * k);
    }
    wRow += r;
  }
  return V;
}

describe('reducedLayout', () => {
  it('keeps the R largest eigenvalues over all layers and counts the rest as discarded', () => {
    const values = [Float64Array.of(9, 4, 1, 0.5), Float64Array.of(8, 7, 0.2), Float64Array.of(3)];
    const lay = reducedLayout(values, [14.5, 15.2, 5], 4, 4);
    // 9, 8, 7, 4: two from layer 0, two from layer 1, none from layer 2.
    expect(lay.ranks).toEqual([2, 2, 0]);
    expect(lay.offsets).toEqual([0, 2, 4]);
    expect(lay.total).toBe(4);
    expect(lay.kept).toEqual([13, 15, 0]);
    // The trace counts what was not offered too (layer 2 offered 3 of its 5).
    expect(lay.discarded.map((d) => +d.toFixed(12))).toEqual([1.5, 0.2, 5]);
    expect(groupColumns(lay, [1, 2])).toEqual([2, 3]);
    // R past what is offered keeps everything offered.
    expect(reducedLayout(values, [14.5, 15.2, 5], 4, 100).ranks).toEqual([4, 3, 1]);
  });
});

describe('two-level fit', () => {
  const L = 3;
  const p = 6;
  const P = L * p;
  const n = 400;
  const X = features(n, L, p, 7);
  const { cov, mean } = covariance(X, n, P);
  const layers = perLayer(cov, L, p);

  it('with every column kept, the reduced covariance has the full one’s eigenvalues and the lifted basis its span', () => {
    const lay = reducedLayout(
      layers.map((l) => l.values),
      layers.map((l) => l.trace),
      p,
      P,
    );
    expect(lay.total).toBe(P);
    const C = reducedFromFull(cov, L, p, layers, lay.ranks);
    const all = [0, 1, 2];
    const block = covarianceBlock(C, P, groupColumns(lay, all));
    const red = symmetricEigen(block, P);
    const full = symmetricEigen(cov, P);
    for (let j = 0; j < P; j++) expect(red.values[j]).toBeCloseTo(full.values[j], 9);
    const k = 5;
    const W = new Float64Array(P * k);
    for (let i = 0; i < P; i++) for (let j = 0; j < k; j++) W[i * k + j] = red.vectors[i * P + j];
    const V = liftVectorsReference(
      lay,
      all,
      layers.map((l) => l.vectors),
      layers.map(() => p),
      W,
      k,
    );
    // |v_jᵀ u_j| = 1 for the top (separated) eigenvectors, and V orthonormal.
    for (let j = 0; j < k; j++) {
      let dot = 0;
      for (let i = 0; i < P; i++) dot += V[i * k + j] * full.vectors[i * P + j];
      expect(Math.abs(dot)).toBeCloseTo(1, 5);
      for (let m = 0; m < k; m++) {
        let g = 0;
        for (let i = 0; i < P; i++) g += V[i * k + j] * V[i * k + m];
        expect(g).toBeCloseTo(j === m ? 1 : 0, 6);
      }
    }
  });

  it('liftVectors (ONNX Runtime) equals the plain-loop reference, for a truncated layout and a sub-group', async () => {
    const lay = reducedLayout(
      layers.map((l) => l.values),
      layers.map((l) => l.trace),
      p,
      8,
    );
    const group = [1, 2];
    const m = groupColumns(lay, group).length;
    const k = 3;
    const rand = mulberry32(3);
    const W = Float64Array.from({ length: m * k }, () => rand() - 0.5);
    const vecs = layers.map((l) => l.vectors);
    const a = liftVectorsReference(
      lay,
      group,
      vecs,
      layers.map(() => p),
      W,
      k,
    );
    const b = await liftVectors(
      lay,
      group,
      vecs,
      layers.map(() => p),
      W,
      k,
    );
    expect(b.length).toBe(group.length * p * k);
    for (let i = 0; i < a.length; i++) expect(b[i]).toBeCloseTo(a[i], 6);
  });

  it('ReducedGram (float16 rows, ONNX Runtime) matches Bᵀ·C·B of the same rounded rows', async () => {
    const lay = reducedLayout(
      layers.map((l) => l.values),
      layers.map((l) => l.trace),
      p,
      10,
    );
    const half = floatArrayToHalf(Float32Array.from(X));
    const rounded = Float64Array.from(halfArrayToFloat(half));
    const ref = covariance(rounded, n, P);
    const C = reducedFromFull(ref.cov, L, p, layers, lay.ranks);
    const gram = await ReducedGram.create(
      lay,
      mean,
      layers.map((l) => l.vectors),
      layers.map(() => p),
    );
    try {
      // Two chunks, as the spill is read.
      await gram.add(half.slice(0, 150 * P), 150);
      await gram.add(half.slice(150 * P), n - 150);
      expect(gram.count).toBe(n);
      const got = gram.finish();
      const R = lay.total;
      let scale = 0;
      for (let i = 0; i < R; i++) scale = Math.max(scale, Math.abs(C[i * R + i]));
      // float32 products over 150- and 250-token chunks: relative to the largest variance.
      for (let i = 0; i < R * R; i++) expect(Math.abs(got[i] - C[i]) / scale).toBeLessThan(1e-5);
    } finally {
      await gram.dispose();
    }
  });
});

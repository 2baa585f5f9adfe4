// Dense vs randomized truncated eigendecomposition of a covariance, side by side in one run:
//   npx tsx scripts/eigen-randomized-bench.ts [p ...] [--threads N] [--reps N] [--q N]
// Dense: symmetricEigenAsync (eigenSteps on ONNX Runtime from p = 384). Randomized:
// randomizedEigenAsync at k = 0.4p and 0.1p. One ORT thread by default, as in the calibration
// workers. The covariance is G·diag(λ)·Gᵀ (G Gaussian / √p, seeded) with a key-like spectrum:
// four outliers, then a power law λ_j ∝ (j+1)^-1.2. Accuracy columns: the largest relative
// error of the k Ritz values against the dense eigenvalues, the variance the k vectors capture
// over the dense top-k variance, and the worst 1 − ‖V_rᵀ v_j‖² over the top k/2 dense vectors.
// A second table times the whole per-basis fit (fit-pool.ts fitBasisTables: eigen, projection
// and error tables) on H held-out tokens drawn from the same covariance, with and without maxRank,
// and the relative change of the DP's held-out error (residual included) against the dense fit.
import { fitBasisTables } from '../src/calibrate/fit-pool.js';
import { symmetricEigenAsync, runStepsOnOrt } from '../src/fit/eigen-ort.js';
import { type AllocationTables, allocateDetailed } from '../src/fit/fit.js';
import { randomizedEigenAsync, type RandomizedEigenOptions } from '../src/fit/eigen-randomized.js';
import type { MatMulRequest } from '../src/fit/eigen-types.js';
import { RANDOMIZED_EIGEN_MIN_P } from '../src/fit/ort-thresholds.js';
import { mulberry32 } from '../src/random.js';

const args = process.argv.slice(2);
const flag = (name: string, dflt: number) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = Number(args[i + 1]);
  args.splice(i, 2);
  return v;
};
const threads = flag('--threads', 1);
const reps = flag('--reps', 3);
const q = flag('--q', -1);
const H = flag('--heldout', 1024);
const sizes = args.length > 0 ? args.map(Number) : [512, 1024, 2048];

export async function keyLikeCovariance(p: number, seed: number, threads: number): Promise<Float64Array> {
  const u = mulberry32(seed);
  const normal = () => Math.sqrt(-2 * Math.log(Math.max(u(), 1e-300))) * Math.cos(2 * Math.PI * u());
  const M = new Float64Array(p * p); // G·diag(√λ)
  const Mt = new Float64Array(p * p);
  for (let j = 0; j < p; j++) {
    const lam = (j < 4 ? 20 : 1) * (j + 1) ** -1.2;
    const s = Math.sqrt(lam / p);
    for (let i = 0; i < p; i++) M[i * p + j] = Mt[j * p + i] = s * normal();
  }
  function* product(): Generator<MatMulRequest, Float64Array, Float64Array> {
    return yield { A: M, B: Mt, m: p, k: p, n: p };
  }
  return runStepsOnOrt(product(), threads);
}

/** H samples with covariance ≈ A's generator: Z·Mᵀ, Z standard normal (same M as keyLikeCovariance(p, seed)). */
async function heldoutSamples(p: number, seed: number, H: number, threads: number): Promise<Float32Array> {
  const u = mulberry32(seed);
  const normal = () => Math.sqrt(-2 * Math.log(Math.max(u(), 1e-300))) * Math.cos(2 * Math.PI * u());
  const Mt = new Float64Array(p * p);
  for (let j = 0; j < p; j++) {
    const s = Math.sqrt(((j < 4 ? 20 : 1) * (j + 1) ** -1.2) / p);
    for (let i = 0; i < p; i++) Mt[j * p + i] = s * normal();
  }
  const u2 = mulberry32(seed + 1);
  const Z = Float64Array.from({ length: H * p }, () => Math.sqrt(-2 * Math.log(Math.max(u2(), 1e-300))) * Math.cos(2 * Math.PI * u2()));
  function* product(): Generator<MatMulRequest, Float64Array, Float64Array> {
    return yield { A: Z, B: Mt, m: H, k: p, n: p };
  }
  return Float32Array.from(await runStepsOnOrt(product(), threads));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

console.log(`threads ${threads}, medians of ${reps}`);
console.log(
  '| p | dense | k = 0.4p randomized | speed-up | k = 0.1p randomized | speed-up | accuracy (0.4p; 0.1p): max rel Ritz error, captured variance, worst top-k/2 residual |',
);
console.log('|---|---|---|---|---|---|---|');
for (const p of sizes) {
  const A = await keyLikeCovariance(p, p, threads);
  const opts: RandomizedEigenOptions = q >= 0 ? { powerIterations: q } : {};
  const ks = [Math.round(0.4 * p), Math.round(0.1 * p)];
  const times: number[][] = [[], [], []];
  let dense = await symmetricEigenAsync(A, p, { threads });
  const rnd = await Promise.all(ks.map((k) => randomizedEigenAsync(A, p, k, { ...opts, threads })));
  for (let r = 0; r < reps; r++) {
    let t = performance.now();
    dense = await symmetricEigenAsync(A, p, { threads });
    times[0].push(performance.now() - t);
    for (const [i, k] of ks.entries()) {
      t = performance.now();
      rnd[i] = await randomizedEigenAsync(A, p, k, { ...opts, threads });
      times[i + 1].push(performance.now() - t);
    }
  }
  const acc = ks.map((k, i) => {
    const e = rnd[i];
    let relErr = 0;
    let captured = 0;
    let top = 0;
    for (let j = 0; j < k; j++) {
      relErr = Math.max(relErr, Math.abs(e.values[j] - dense.values[j]) / dense.values[j]);
      captured += e.values[j];
      top += dense.values[j];
    }
    let worst = 0;
    for (let j = 0; j < Math.floor(k / 2); j++) {
      let n2 = 0;
      for (let c = 0; c < k; c++) {
        let d = 0;
        for (let r = 0; r < p; r++) d += e.vectorsT[c * p + r] * dense.vectorsT[j * p + r];
        n2 += d * d;
      }
      worst = Math.max(worst, 1 - n2);
    }
    return `${relErr.toExponential(1)}, ${(captured / top).toFixed(6)}, ${worst.toExponential(1)}`;
  });
  const ms = times.map(median);
  const f = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(0)} ms`);
  console.log(
    `| ${p} | ${f(ms[0])} | ${f(ms[1])} | ${(ms[0] / ms[1]).toFixed(1)}x | ${f(ms[2])} | ${(ms[0] / ms[2]).toFixed(1)}x | ${acc.join('; ')} |`,
  );
}

console.log(`\nper-basis fit (fitBasisTables: eigen + projection + error tables), ${H} held-out tokens, medians of ${reps}`);
console.log('| p | dense, all p components | maxRank = 0.4p | maxRank = 0.1p | DP error vs dense: 0.4p at 30x; 0.1p at 120x |');
console.log('|---|---|---|---|---|');
for (const p of sizes) {
  const cov = await keyLikeCovariance(p, p, threads);
  const heldout = await heldoutSamples(p, p, H, threads);
  const job = { kind: 'key' as const, layers: [0], dim: p, cov, mean: new Float64Array(p), heldout, heldoutTokens: H };
  const ranks = [undefined, Math.round(0.4 * p), Math.round(0.1 * p)];
  const runs: { eigen: number; tables: number }[][] = ranks.map(() => []);
  const tables: AllocationTables[] = []; // warm-up
  for (const maxRank of ranks) tables.push((await fitBasisTables({ ...job, maxRank }, { eigenThreads: threads })).tables);
  // maxRankForRatios(p, [30]) = 0.4p and maxRankForRatios(p, [120]) = 0.1p: the ratios these maxRanks serve.
  const dp = ([30, 120] as const).map((ratio, i) => {
    const budget = Math.floor((16 * p) / ratio);
    const d = allocateDetailed(tables[0], budget).allocation.error;
    return `${(allocateDetailed(tables[i + 1], budget).allocation.error / d - 1).toExponential(1)}`;
  });
  for (let r = 0; r < reps; r++) {
    for (const [i, maxRank] of ranks.entries())
      runs[i].push((await fitBasisTables({ ...job, maxRank }, { eigenThreads: threads })).seconds);
  }
  const cell = (xs: { eigen: number; tables: number }[]) => {
    const e = median(xs.map((x) => x.eigen));
    const t = median(xs.map((x) => x.tables));
    return `${(e + t).toFixed(2)} s (eigen ${e.toFixed(2)} + tables ${t.toFixed(2)})`;
  };
  const note = p < RANDOMIZED_EIGEN_MIN_P ? ' (below RANDOMIZED_EIGEN_MIN_P: maxRank is ignored)' : '';
  console.log(`| ${p}${note} | ${runs.map(cell).join(' | ')} | ${dp.join('; ')} |`);
}

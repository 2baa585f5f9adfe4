/**
 * What one two-level block eigensolve costs at a given width and rank (issue 21, "rank ~10K"):
 * the solve calibrate runs for each kind of a multi-layer basis (fit-pool.ts blockEigen, as
 * BlockEigenGate runs a block too large to pair: alone, ORT on every core), timed by part.
 *
 *   npx tsx scripts/block-eigen-bench.ts --m 16384 --k 9830 [--threads 0] [--seed 1] [--json out.json]
 *
 * --k (default 0.6·m) up to m: blockSolver picks the randomized solver up to 0.6·m and the dense
 * decomposition cut to k above it, as calibrate does.
 *
 * The block is symmetric positive definite with a power-law spectrum like the two-level fit's
 * (its diagonal is the per-layer eigenvalues, λ_j ∝ (j+1)^-0.8, coupled across layers):
 * A = D^½ (I + E) D^½ with E symmetric Gaussian scaled so ‖E‖₂ ≈ 0.6, built in O(m²).
 * Reports the wall time, the part spent in ONNX Runtime's products and the part in JavaScript
 * (the Rayleigh–Ritz reduction, divide and conquer and the Cholesky steps), the peak RSS
 * (VmHWM, Linux) against blockEigenBytes (the memory plan's figure for it), and checks the
 * result: ‖A·w − λ·w‖ / λ₁ for the top, middle and last returned pairs and max |WᵀW − I| on
 * 64 columns.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { blockEigenBytes, blockSolver } from '../src/calibrate/fit-pool.js';
import { matMulAsync } from '../src/fit/eigen-ort.js';
import { defaultOversample, RANDOMIZED_MAX_RANK_FRACTION, randomizedEigenSteps, truncate } from '../src/fit/eigen-randomized.js';
import { eigenSteps } from '../src/fit/eigen-steps.js';
import { mulberry32 } from '../src/random.js';
import { gib, vmHwm } from './peak-memory.js';

const { values: a } = parseArgs({
  options: {
    m: { type: 'string', default: '4096' },
    k: { type: 'string' },
    threads: { type: 'string', default: '0' },
    seed: { type: 'string', default: '1' },
    json: { type: 'string' },
  },
});
const fail = (msg: string): never => {
  console.error(`block-eigen-bench: ${msg}`);
  process.exit(2);
};
const m = Number(a.m);
if (!Number.isInteger(m) || m < 384) fail(`--m must be an integer >= 384, got "${a.m}"`);
const k = a.k === undefined ? Math.floor(RANDOMIZED_MAX_RANK_FRACTION * m) : Number(a.k);
if (!Number.isInteger(k) || k < 1 || k > m) fail(`--k must be an integer in [1, ${m}] (--m), got "${a.k}"`);
const threads = Number(a.threads);
const seed = Number(a.seed);
const solver = blockSolver(m, k);
const l = solver === 'randomized' ? Math.min(m, k + defaultOversample(k)) : m;

let t = performance.now();
const u = mulberry32(seed);
const normal = () => Math.sqrt(-2 * Math.log(Math.max(u(), 1e-300))) * Math.cos(2 * Math.PI * u());
const d = Float64Array.from({ length: m }, (_, j) => Math.sqrt((j + 1) ** -0.8));
const A = new Float64Array(m * m);
const s = 0.3 / Math.sqrt(m);
for (let i = 0; i < m; i++) {
  A[i * m + i] = d[i] * d[i];
  for (let j = 0; j < i; j++) A[i * m + j] = A[j * m + i] = s * normal() * d[i] * d[j];
}
const buildSeconds = (performance.now() - t) / 1e3;
const before = vmHwm();
console.error(
  `block ${m} × ${m} (${gib(8 * m * m)}) built in ${buildSeconds.toFixed(1)} s; k = ${k}, ${solver} (${solver === 'randomized' ? `sketch l = ${l}` : 'the dense decomposition, cut to k'}); ORT threads ${threads}`,
);

// blockEigen's solver (fit-pool.ts blockSolver), its products timed apart.
function* solve() {
  if (solver === 'randomized') return yield* randomizedEigenSteps(A, m, k);
  const e = yield* eigenSteps(A, m);
  return truncate(e.values, e.vectorsT, m, k);
}
t = performance.now();
let ort = 0;
let products = 0;
let flops = 0;
const steps = solve();
let r = steps.next(new Float64Array(0));
while (!r.done) {
  const q = r.value;
  const t0 = performance.now();
  const out = await matMulAsync(q.A, q.B, q.m, q.k, q.n, threads);
  ort += performance.now() - t0;
  products++;
  flops += 2 * q.m * q.k * q.n;
  r = steps.next(out);
}
const wall = (performance.now() - t) / 1e3;
const e = r.value;
const peak = vmHwm();

// Checks: residuals of three pairs, orthonormality of 64 columns.
const resid = (j: number) => {
  let n2 = 0;
  for (let i = 0; i < m; i++) {
    let acc = 0;
    const row = i * m;
    for (let c = 0; c < m; c++) acc += A[row + c] * e.vectorsT[j * m + c];
    const dlt = acc - e.values[j] * e.vectorsT[j * m + i];
    n2 += dlt * dlt;
  }
  return Math.sqrt(n2) / e.values[0];
};
const picks = [0, Math.floor(k / 2), k - 1];
const residuals = picks.map(resid);
let orth = 0;
const cols = Array.from({ length: 64 }, (_, i) => Math.floor((i * (k - 1)) / 63));
for (const x of cols)
  for (const y of cols) {
    let dot = 0;
    for (let i = 0; i < m; i++) dot += e.vectorsT[x * m + i] * e.vectorsT[y * m + i];
    orth = Math.max(orth, Math.abs(dot - (x === y ? 1 : 0)));
  }

const result = {
  m,
  k,
  solver,
  l,
  threads,
  seconds: { wall, ort_products: ort / 1e3, javascript: wall - ort / 1e3 },
  products,
  product_gflop: flops / 1e9,
  product_gflops_per_s: flops / 1e9 / (ort / 1e3),
  peak_rss_bytes: peak,
  rss_before_solve_bytes: before,
  block_eigen_bytes_estimate: blockEigenBytes(m, k),
  residual_over_lambda1: Object.fromEntries(picks.map((j, i) => [`pair_${j}`, residuals[i]])),
  max_orthonormality_error_64_columns: orth,
  values: { first: e.values[0], middle: e.values[picks[1]], last: e.values[k - 1] },
};
console.log(
  `m ${m}, k ${k} (${solver}, l ${l}): ${wall.toFixed(1)} s wall = ${(ort / 1e3).toFixed(1)} s in ${products} ORT products ` +
    `(${(flops / 1e9).toFixed(0)} GFLOP, ${result.product_gflops_per_s.toFixed(1)} GFLOP/s) + ${(wall - ort / 1e3).toFixed(1)} s JavaScript; ` +
    `peak ${gib(peak)} (before the solve ${gib(before)}; blockEigenBytes ${gib(result.block_eigen_bytes_estimate)}); ` +
    `residual/λ₁ ${residuals.map((x) => x.toExponential(1)).join(', ')}; |WᵀW − I| ${orth.toExponential(1)}`,
);
if (a.json) writeFileSync(a.json, JSON.stringify(result, null, 2) + '\n');

// Timings that tests used to bound with wall-clock thresholds (issue 22: tests check properties,
// speed is measured here and recorded in docs/benchmarks.md, "Timings the tests used to bound"):
//   npx tsx scripts/test-timings-bench.ts [--reps N]
// Each row: median (min–max) of N runs, in-process, on this machine, and the bound a test once
// asserted, for comparison.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readCalibrationTokens } from '../src/calibrate/sequences.js';
import type { BasisPlan } from '../src/codec/types.js';
import { allocateBits } from '../src/fit/dp.js';
import { symmetricEigen } from '../src/fit/eigen.js';
import { dynamicIndex, type ErrorTables } from '../src/fit/error-tables.js';
import { loadTokenizer } from '../src/model/tokenizer.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR } from '../src/paths.js';
import { readProfile } from '../src/profile/read.js';
import { writeProfile, type ManifestDraft } from '../src/profile/write.js';
import { mulberry32 } from '../src/random.js';

const args = process.argv.slice(2);
const reps = args.includes('--reps') ? Number(args[args.indexOf('--reps') + 1]) : 5;
const rand = mulberry32(7);
const normal = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());

async function time(fn: () => unknown | Promise<unknown>): Promise<string> {
  const ms: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  const f = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
  return `${f(ms[ms.length >> 1])} ms (${f(ms[0])}–${f(ms[ms.length - 1])})`;
}

/** B·Bᵀ for a Gaussian B [p, p]: a dense symmetric matrix. */
function randomSymmetric(p: number): Float64Array {
  const B = Float64Array.from({ length: p * p }, normal);
  const A = new Float64Array(p * p);
  for (let i = 0; i < p; i++)
    for (let j = 0; j < p; j++) {
      let s = 0;
      for (let q = 0; q < p; q++) s += B[i * p + q] * B[j * p + q];
      A[i * p + j] = s;
    }
  return A;
}

/** DP tables of p = 1024 components with granule 16, errors decaying with the component index (test/fit/dp.test.ts). */
function bigTables(): ErrorTables {
  const p = 1024;
  const g = 16;
  const M = 16;
  const t: ErrorTables = {
    dim: p,
    tokens: 1,
    granule: g,
    maxGranules: M,
    none: new Float64Array(p),
    staticErr: new Float64Array(4 * p),
    staticLo: new Float32Array(4 * p),
    staticHi: new Float32Array(4 * p),
    staticTuned: new Uint8Array(4 * p),
    dynamicErr: new Float64Array(64 * M * 4),
  };
  const factor = [0.3, 0.05, 0.002, 0.004];
  for (let j = 0; j < p; j++) {
    t.none[j] = (10 + 10 * rand()) / (1 + j / 16);
    for (let ti = 0; ti < 4; ti++) t.staticErr[ti * p + j] = t.none[j] * factor[ti] * (0.5 + rand());
  }
  for (let k = 0; k < 64; k++)
    for (let m = 1; m <= M; m++)
      for (let ti = 0; ti < 4; ti++) {
        let s = 0;
        for (let j = k * g; j < Math.min(p, (k + m) * g); j++) s += t.staticErr[ti * p + j];
        t.dynamicErr[dynamicIndex(t, k, m, ti)] = k + m > 64 ? Infinity : s * 0.7;
      }
  return t;
}

/** A profile with two p = r = 256 bases (orthonormal: eigenvectors), too large for readProfile's full Gram check. */
async function bigProfile(): Promise<string> {
  const p = 256;
  const committed = await readProfile(join(DEFAULT_PROFILES_DIR, 'stories260k'));
  const plans: BasisPlan[] = (['key', 'value'] as const).map((kind) => ({
    kind,
    layers: [0],
    dim: p,
    rank: p,
    mean: new Float32Array(p),
    basis: Float32Array.from(symmetricEigen(randomSymmetric(p), p).vectors),
    variances: new Float32Array(p).fill(1),
    lo: new Float32Array(p).fill(-1),
    hi: new Float32Array(p).fill(1),
    groups: [{ start: 0, end: p, type: 'int2', mode: 'static' }],
  }));
  const { profile_id: _i, tensors: _t, plans: _p, ...draft } = committed.manifest;
  const rel = draft.measured.rel_error;
  const d: ManifestDraft = {
    ...draft,
    measured: { ...draft.measured, rel_error: { ...rel, key: [rel.key_mean], value: [rel.value_mean] } },
    model: { ...draft.model, layers: 1, kv_heads: 4, head_dim: 64, rope: [{ layers: [0], theta: 10000, rotary_dim: 64, layout: 'half' }] },
  };
  const dir = join(mkdtempSync(join(tmpdir(), 'kvtc-timings-')), 'big');
  await writeProfile(dir, d, plans);
  return dir;
}

/** 4 MB of the bundled calibration text, repeated. */
function bigText(): string {
  const src = readFileSync(join(DEFAULT_CALIBRATION_DIR, 'inaugural-1789-Washington.txt'), 'utf8');
  const file = join(mkdtempSync(join(tmpdir(), 'kvtc-timings-')), 'big.txt');
  writeFileSync(file, src.repeat(Math.ceil(4_000_000 / src.length)));
  return file;
}

const rows: [string, string, string][] = [];
const A = randomSymmetric(256);
rows.push(['symmetricEigen, p = 256 (test/fit/eigen.test.ts)', await time(() => symmetricEigen(A, 256)), '3 s']);
const tables = bigTables();
rows.push(['allocateBits, p = 1024 at ratio 4 (test/fit/dp.test.ts)', await time(() => allocateBits(tables, (16 * 1024) / 4)), '5 s']);
const big = await bigProfile();
rows.push([
  'readProfile, two p = r = 256 bases, sampled orthonormality (test/profile/orthonormality.test.ts)',
  await time(() => readProfile(big)),
  '2 s',
]);
const tokenizer = await loadTokenizer(DEFAULT_MODEL_DIR);
const text = bigText();
rows.push([
  'readCalibrationTokens, 4 MB file, budget of 16384 + 4096 tokens (test/calibrate/sequences.test.ts)',
  await time(() => readCalibrationTokens([text], tokenizer, { fitTokens: 16384, heldoutTokens: 4096 })),
  '5 s',
]);
rows.push([
  'readCalibrationTokens, abort after the first chunk → INTERRUPTED (sequences.test.ts, data.test.ts)',
  await time(async () => {
    const ac = new AbortController();
    let chunks = 0;
    const t = {
      ...tokenizer,
      encode: (s: string, o?: { addBos?: boolean }) => (s.length > 128 && ++chunks === 1 && ac.abort(), tokenizer.encode(s, o)),
    };
    await readCalibrationTokens([text], t, { fitTokens: 10_000_000, heldoutTokens: 4096, signal: ac.signal }).catch(() => undefined);
  }),
  '1 s (from the signal)',
]);

console.log(`| what (the test that bounded it) | median (min–max) of ${reps} | the bound it had |`);
console.log('|---|---|---|');
for (const r of rows) console.log(`| ${r.join(' | ')} |`);

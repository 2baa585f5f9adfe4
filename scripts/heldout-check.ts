/**
 * An independent check of the error kvtc calibrate reports (issue 15's acceptance).
 *
 * The corpus is the bundled inaugural addresses. kvtc calibrates stories260K on those up to
 * 1945 (part A), at 2x, 8x and 20x, and reads only as much of part A as it needs (the first
 * files, in order). Then, on text calibration never saw, this script
 *  1. encodes and decodes each cache with each profile and measures ‖x̂−x‖/‖x‖ per layer over
 *     the compressed tokens itself (not with kvtc's measure.ts), on two unseen parts: the
 *     part-A files calibration did not read ("unseen", the acceptance check), and the addresses
 *     from 1949 on ("later era", a shift in time and style, shown for comparison);
 *  2. builds, for every single stored type of kvtc (int2, int4, int8, fp8; static min/max
 *     ranges or one dynamic group), the allocation "the first r components of the PCA basis in
 *     that type" at the raw bits per token of kvtc's plan, on a PCA fitted here with
 *     ml-matrix's EVD (not kvtc's eigensolver) on part A, and measures it on the unseen part.
 *
 *   npx tsx scripts/heldout-check.ts [--ratios 2,8,20] [--grouping auto] [--check-tokens 24576] [--json]
 */
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { EigenvalueDecomposition, Matrix } from 'ml-matrix';
import { calibrate, type CalibrateResult, type Grouping } from '../src/calibrate/calibrate.js';
import { readCalibrationTokens, splitSequences } from '../src/calibrate/sequences.js';
import { KvtcCodec } from '../src/codec/codec.js';
import { TYPE_BITS, DYNAMIC_OVERHEAD_BITS, type BasisPlan, type QuantType } from '../src/codec/types.js';
import { gatherFeatures } from '../src/fit/features.js';
import { loadModel } from '../src/model/load.js';
import { ModelRunner } from '../src/model/runner.js';
import type { KvCache, ModelSpec } from '../src/model/types.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../src/paths.js';
import { codecFromProfile } from '../src/profile/codec-from-profile.js';
import { readProfile } from '../src/profile/read.js';

const SINK = 4;
const WINDOW = 128;

/** Part A (≤ 1945) and part B (≥ 1949) of the bundled inaugural addresses. */
export function corpusParts(dir = DEFAULT_CALIBRATION_DIR): { a: string[]; b: string[] } {
  // Dates are in the file names (inaugural-YYYY-Name.txt).
  const files = readdirSync(dir)
    .filter((f) => /^inaugural-\d{4}-.*\.txt$/.test(f))
    .sort();
  const year = (f: string) => Number(f.slice(10, 14));
  return {
    a: files.filter((f) => year(f) <= 1945).map((f) => join(dir, f)),
    b: files.filter((f) => year(f) >= 1949).map((f) => join(dir, f)),
  };
}

/** Per-layer ‖x̂−x‖² and ‖x‖² over tokens [t0, t1) of every layer, keys (0) and values (1), added into sums. */
function addError(x: KvCache, y: KvCache, t0: number, t1: number, sums: { num: Float64Array[]; den: Float64Array[] }): void {
  for (let kind = 0; kind < 2; kind++) {
    for (let l = 0; l < x.layers; l++) {
      const a = kind === 0 ? x.keys[l] : x.values[l];
      const b = kind === 0 ? y.keys[l] : y.values[l];
      for (let h = 0; h < x.kvHeads; h++) {
        for (let t = t0; t < t1; t++) {
          const o = (h * x.tokens + t) * x.headDim;
          for (let d = 0; d < x.headDim; d++) {
            const e = b[o + d] - a[o + d];
            sums.num[kind][l] += e * e;
            sums.den[kind][l] += a[o + d] * a[o + d];
          }
        }
      }
    }
  }
}

export interface Figures {
  key: number;
  value: number;
  /** fp16 bytes of the compressed tokens ÷ their blob bytes (as kvtc's ratio_compressed). */
  ratio: number;
}

/** Encodes and decodes every cache with the codec; errors computed here, mean over layers. */
async function measure(codec: KvtcCodec, caches: KvCache[]): Promise<Figures> {
  const L = caches[0].layers;
  const sums = { num: [new Float64Array(L), new Float64Array(L)], den: [new Float64Array(L), new Float64Array(L)] };
  let fp16 = 0;
  let bytes = 0;
  for (const c of caches) {
    const { blob, stats } = await codec.encode(c);
    fp16 += stats.fp16BytesCompressed;
    bytes += stats.compressedBytes;
    const { cache: back } = await codec.decode(blob);
    addError(c, back, SINK, c.tokens - WINDOW, sums);
  }
  const rel = (k: number) => Array.from(sums.num[k], (n, l) => Math.sqrt(n / sums.den[k][l])).reduce((a, b) => a + b, 0) / L;
  return { key: rel(0), value: rel(1), ratio: fp16 / bytes };
}

/** PCA of one plan's features on the part-A caches, with ml-matrix (descending eigenvalues). */
function pca(
  caches: KvCache[],
  spec: ModelSpec,
  plan: Pick<BasisPlan, 'kind' | 'layers' | 'dim'>,
): { mean: Float64Array; vectors: Matrix; coeffs: Float64Array[] } {
  const p = plan.dim;
  const feats = caches.map((c) => gatherFeatures(c, { kind: plan.kind, layers: plan.layers }, spec.rope, SINK, c.tokens));
  const n = feats.reduce((a, f) => a + f.length / p, 0);
  const mean = new Float64Array(p);
  for (const f of feats) for (let i = 0; i < f.length; i++) mean[i % p] += f[i] / n;
  const acc = new Float64Array(p * p);
  const row = new Float64Array(p);
  for (const f of feats) {
    for (let t = 0; t < f.length / p; t++) {
      for (let i = 0; i < p; i++) row[i] = f[t * p + i] - mean[i];
      for (let i = 0; i < p; i++) {
        const ri = row[i] / n;
        const o = i * p;
        for (let j = 0; j < p; j++) acc[o + j] += ri * row[j];
      }
    }
  }
  const cov = new Matrix(Array.from({ length: p }, (_, i) => Array.from(acc.subarray(i * p, i * p + p))));
  const evd = new EigenvalueDecomposition(cov, { assumeSymmetric: true });
  const order = evd.realEigenvalues
    .map((v, i) => [v, i])
    .sort((a, b) => b[0] - a[0])
    .map((x) => x[1]);
  const V = evd.eigenvectorMatrix;
  const vectors = Matrix.zeros(p, p);
  for (let j = 0; j < p; j++) for (let i = 0; i < p; i++) vectors.set(i, j, V.get(i, order[j]));
  // Coefficients of part A per component: the static min/max ranges come from them.
  const coeffs = Array.from({ length: p }, () => new Float64Array(n));
  const Vt = new Float64Array(p * p); // Vt[j*p + i] = vectors(i, j)
  for (let i = 0; i < p; i++) for (let j = 0; j < p; j++) Vt[j * p + i] = vectors.get(i, j);
  let t0 = 0;
  for (const f of feats) {
    for (let t = 0; t < f.length / p; t++, t0++) {
      for (let i = 0; i < p; i++) row[i] = f[t * p + i] - mean[i];
      for (let j = 0; j < p; j++) {
        let s = 0;
        const o = j * p;
        for (let i = 0; i < p; i++) s += row[i] * Vt[o + i];
        coeffs[j][t0] = s;
      }
    }
  }
  return { mean, vectors, coeffs };
}

/** "The first r components in one type": static (min/max of part A) or one dynamic group. */
function singleTypePlan(
  basis: ReturnType<typeof pca>,
  like: BasisPlan,
  type: Exclude<QuantType, 'none'>,
  mode: 'static' | 'dynamic',
  bits: number,
): BasisPlan | null {
  const p = like.dim;
  const r = Math.min(p, Math.floor((bits - (mode === 'dynamic' ? DYNAMIC_OVERHEAD_BITS : 0)) / TYPE_BITS[type]));
  if (r < 1) return null;
  const B = new Float32Array(p * r);
  for (let i = 0; i < p; i++) for (let j = 0; j < r; j++) B[i * r + j] = basis.vectors.get(i, j);
  const lo = new Float32Array(r);
  const hi = new Float32Array(r);
  const variances = new Float32Array(r);
  for (let j = 0; j < r; j++) {
    let mn = Infinity;
    let mx = -Infinity;
    let v = 0;
    for (const c of basis.coeffs[j]) {
      if (c < mn) mn = c;
      if (c > mx) mx = c;
      v += c * c;
    }
    lo[j] = mn;
    hi[j] = mx;
    variances[j] = v / basis.coeffs[j].length;
  }
  return {
    kind: like.kind,
    layers: like.layers,
    dim: p,
    rank: r,
    mean: Float32Array.from(basis.mean),
    basis: B,
    variances,
    groups: [{ start: 0, end: r, type, mode }],
    lo,
    hi,
  };
}

export interface CheckRow {
  ratio_target: number;
  grouping: string;
  /** What kvtc calibrate reported (its report split, part A). */
  reported: Figures;
  /** kvtc's 95% intervals of the reported errors (bootstrap over its report sequences). */
  reported_ci95: { key?: [number, number]; value?: [number, number] };
  /** The same profile measured here on the part-A files calibration did not read. */
  unseen: Figures;
  /** reported ÷ unseen − 1 (negative: kvtc reported a smaller error than unseen text shows). */
  key_bias: number;
  value_bias: number;
  /** The same profile on the addresses from 1949 on, and reported ÷ that − 1 (NaN with later: false). */
  later: Figures;
  later_key_bias: number;
  later_value_bias: number;
  /** Every single-type allocation at kvtc's raw bits, measured on the unseen part; best by value error first. */
  single_type: { type: string; mode: string; key: number; value: number; ratio: number }[];
}

export async function heldoutCheck(o: {
  ratios?: number[];
  grouping?: Grouping;
  out: string;
  checkTokens?: number;
  tokens?: number;
  later?: boolean;
}): Promise<{ calibration: CalibrateResult; rows: CheckRow[] }> {
  const ratios = o.ratios ?? [2, 8, 20];
  const parts = corpusParts();
  const calibration = await calibrate({
    modelDir: DEFAULT_MODEL_DIR,
    data: parts.a,
    ratios,
    ratiosGiven: true,
    tokens: o.tokens ?? 16384,
    heldout: 4096,
    sink: SINK,
    window: WINDOW,
    grouping: o.grouping ?? 'auto',
    chunk: 256,
    seed: 0,
    device: 'cpu',
    out: o.out,
    force: true,
  });
  const model = await loadModel(DEFAULT_MODEL_DIR);
  const spec = model.spec;
  const runner = new ModelRunner(model);
  const prefill = async (files: string[], tokens: number, seed: number) => {
    const d = await readCalibrationTokens(files, model.tokenizer, { fitTokens: tokens, heldoutTokens: 512 });
    const s = splitSequences(d.tokens, model.tokenizer.bosTokenId, {
      seqLen: 512,
      fitTokens: tokens,
      heldoutTokens: 512,
      seed,
      minFitTokens: 256,
      sources: 'x',
    });
    const out: KvCache[] = [];
    for (const ids of [...s.heldout, ...s.fit]) out.push((await runner.prefill(ids, { chunk: 256 })).cache);
    return out;
  };
  let rows: CheckRow[];
  try {
    const read = new Set((await readProfile(calibration.profiles[0].profile)).manifest.calibration.sources.map((x) => x.name));
    const unread = parts.a.filter((f) => !read.has(basename(f)));
    const unseen = await prefill(unread, (o.checkTokens ?? 24576) - 512, 1);
    const later = o.later === false ? [] : await prefill(parts.b, (o.checkTokens ?? 24576) - 512, 1);
    // The single-type bases: a PCA of the part of part A calibration read, fitted here.
    const partA = await prefill(
      parts.a.filter((f) => read.has(basename(f))),
      16384 - 512,
      2,
    );
    // Single types are compared on the first 16 unseen sequences (8192 tokens) to keep this quick.
    const unseenSingle = unseen.slice(0, 16);
    rows = [];
    const bases = new Map<string, ReturnType<typeof pca>>();
    for (const p of calibration.profiles) {
      const profile = await readProfile(p.profile);
      const codec = await codecFromProfile(profile, { transformThread: false });
      let figures: Figures;
      let laterFigures: Figures;
      try {
        figures = await measure(codec, unseen);
        laterFigures = later.length ? await measure(codec, later) : { key: Number.NaN, value: Number.NaN, ratio: Number.NaN };
      } finally {
        await codec.release();
      }
      const singles: CheckRow['single_type'] = [];
      for (const type of ['int2', 'int4', 'int8', 'fp8'] as const) {
        for (const mode of ['static', 'dynamic'] as const) {
          const plans: BasisPlan[] = [];
          for (const plan of profile.plans) {
            const key = `${plan.kind}:${plan.layers.join(',')}`;
            if (!bases.has(key)) bases.set(key, pca(partA, spec, plan));
            const bits = plan.groups.reduce(
              (a, g) =>
                a + (g.type === 'none' ? 0 : (g.end - g.start) * TYPE_BITS[g.type] + (g.mode === 'dynamic' ? DYNAMIC_OVERHEAD_BITS : 0)),
              0,
            );
            const s = singleTypePlan(bases.get(key)!, plan, type, mode, bits);
            if (s) plans.push(s);
            else
              plans.push({
                ...plan,
                rank: 0,
                basis: new Float32Array(0),
                variances: new Float32Array(0),
                lo: new Float32Array(0),
                hi: new Float32Array(0),
                groups: [],
              });
          }
          const c = await KvtcCodec.create(
            {
              layers: spec.layers,
              kvHeads: spec.kvHeads,
              headDim: spec.headDim,
              rope: spec.rope,
              profileId: '0000000000000000',
              sink: SINK,
              window: WINDOW,
              entropy: profile.manifest.settings.entropy,
            },
            plans,
          );
          try {
            singles.push({ type, mode, ...(await measure(c, unseenSingle)) });
          } finally {
            await c.release();
          }
        }
      }
      singles.sort((a, b) => a.value - b.value);
      rows.push({
        ratio_target: p.ratio_target,
        grouping: p.grouping,
        reported: { key: p.rel_error.key, value: p.rel_error.value, ratio: p.ratio_compressed },
        reported_ci95: { key: p.rel_error.key_ci95, value: p.rel_error.value_ci95 },
        unseen: figures,
        key_bias: p.rel_error.key / figures.key - 1,
        value_bias: p.rel_error.value / figures.value - 1,
        later: laterFigures,
        later_key_bias: p.rel_error.key / laterFigures.key - 1,
        later_value_bias: p.rel_error.value / laterFigures.value - 1,
        single_type: singles,
      });
    }
  } finally {
    await model.session.release();
  }
  return { calibration, rows };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const ratios = (arg('--ratios') ?? '2,8,20').split(',').map(Number);
  const grouping = (arg('--grouping') ?? 'auto') as Grouping;
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'kvtc-heldout-check-'));
  try {
    const { rows } = await heldoutCheck({
      ratios,
      checkTokens: Number(arg('--check-tokens') ?? 24576),
      grouping: /^\d+$/.test(grouping as string) ? Number(grouping) : grouping,
      out: join(dir, 'p'),
    });
    if (process.argv.includes('--json')) console.log(JSON.stringify(rows, null, 2));
    else {
      const f = (x: Figures) => `${x.key.toFixed(5)} / ${x.value.toFixed(5)} (${x.ratio.toFixed(2)}x)`;
      const pct = (a: number, b: number) => `${(100 * a).toFixed(1)}% / ${(100 * b).toFixed(1)}%`;
      console.log(
        '| target | grouping | reported K / V (ratio) | unseen part-A files K / V (ratio) | reported vs unseen | addresses 1949– K / V | reported vs 1949– | best single type on unseen: V (K, ratio) |',
      );
      console.log('|---|---|---|---|---|---|---|---|');
      for (const r of rows) {
        const b = r.single_type[0];
        console.log(
          `| ${r.ratio_target}x | ${r.grouping} | ${f(r.reported)} | ${f(r.unseen)} | ${pct(r.key_bias, r.value_bias)} | ${f(r.later)} | ${pct(r.later_key_bias, r.later_value_bias)} | ${b.type} ${b.mode}: ${b.value.toFixed(4)} (${b.key.toFixed(4)}, ${b.ratio.toFixed(2)}x) |`,
        );
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

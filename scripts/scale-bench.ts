/**
 * Calibration at the KV geometry of real models (issue 21): time per stage, peak memory, bytes
 * written, groupings fitted / skipped / chosen and the ratio reached, on a seeded random Llama
 * whose KV cache has the real model's layers × KV heads × head_dim and a power-law spectrum
 * (random-llama.ts KvSpectrum), with the hidden size shrunk so the forward pass is cheap.
 *
 *   npx tsx scripts/scale-bench.ts --geometry llama8b --tokens 16384 [--heldout 4096 --report 8192]
 *     [--grouping auto] [--ratio 20] [--json out.json]
 *     [--hidden H] [--intermediate I] [--layers N] [--decay 0.5] [--data PATH ...] [--chunk 256] [--seed 0]
 *     [--out DIR] [--memory GiB] [--two-level-rank R] [--covariance-budget GiB] [--eigensolver auto|builtin|numpy|torch]
 *     [--build-only] [--dry-run] [--tiny]
 *
 * Hidden size defaults to min(KV features per layer, 1024), lowered in steps of 128 until the
 * ONNX file fits its 2 GB limit (Gemma 3 27B: 640); intermediate defaults to hidden.
 * The model is built once into os.tmpdir()/kvtc-scale/<name> and reused. --tiny: 2 layers,
 * hidden 128 and a few thousand tokens, to check the script end to end in about a minute.
 * Peak memory is the process's (worker threads share its RSS): sampled every 250 ms, and
 * VmHWM from /proc/self/status at the end (Linux), which also catches peaks between samples.
 */
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { calibrate, type Grouping } from '../src/calibrate/calibrate.js';
import { buildRandomLlama } from '../src/convert/random-llama.js';
import { DEFAULT_CALIBRATION_DIR } from '../src/paths.js';
import type { EigensolverChoice } from '../src/fit/eigen-python.js';
import { gib, vmHwm } from './peak-memory.js';

interface Geometry {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Gemma 3: every `period`-th layer global, the others attend to the last `size` tokens. */
  window?: { size: number; period: number };
  real: string;
}

const GEOMETRIES: Record<string, Geometry> = {
  llama8b: { layers: 32, kvHeads: 8, headDim: 128, real: 'Llama 3.1 8B: 32 layers, 32 query / 8 KV heads × 128, hidden 4096' },
  nemo12b: { layers: 40, kvHeads: 8, headDim: 128, real: 'Mistral NeMo 12B: 40 layers, 32 / 8 × 128, hidden 5120' },
  'qwen3-30b-a3b': { layers: 48, kvHeads: 4, headDim: 128, real: 'Qwen3-30B-A3B: 48 layers, 32 / 4 × 128, hidden 2048 (MoE)' },
  'llama70b-stage': {
    layers: 20,
    kvHeads: 8,
    headDim: 128,
    real: 'Llama 3.1 70B: 80 layers, 64 / 8 × 128, hidden 8192; one of four 20-layer pipeline stages',
  },
  'gemma3-27b': {
    layers: 62,
    kvHeads: 16,
    headDim: 128,
    window: { size: 1024, period: 6 },
    real: 'Gemma 3 27B: 62 layers, 32 / 16 × 128, hidden 5376; 5 sliding-window (1024) layers then 1 global',
  },
};

const { values: a } = parseArgs({
  options: {
    geometry: { type: 'string', default: 'llama8b' },
    tokens: { type: 'string' },
    heldout: { type: 'string' },
    report: { type: 'string' },
    grouping: { type: 'string', default: 'auto' },
    ratio: { type: 'string', default: '20' },
    json: { type: 'string' },
    hidden: { type: 'string' },
    intermediate: { type: 'string' },
    layers: { type: 'string' },
    decay: { type: 'string', default: '0.5' },
    data: { type: 'string', multiple: true },
    chunk: { type: 'string', default: '256' },
    seed: { type: 'string', default: '0' },
    out: { type: 'string' },
    memory: { type: 'string' },
    'two-level-rank': { type: 'string' },
    'covariance-budget': { type: 'string' },
    eigensolver: { type: 'string' },
    'build-only': { type: 'boolean', default: false },
    'dry-run': { type: 'boolean', default: false },
    tiny: { type: 'boolean', default: false },
  },
});

function fail(message: string): never {
  console.error(`scale-bench: ${message}`);
  process.exit(2);
}
function int(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) fail(`--${name} must be a positive integer, got "${v}"`);
  return n;
}

const geo = GEOMETRIES[a.geometry!] ?? fail(`unknown --geometry "${a.geometry}"; one of: ${Object.keys(GEOMETRIES).join(', ')}`);
const tiny = a.tiny!;
const layers = int('layers', a.layers, tiny ? 2 : geo.layers);
const headDim = geo.headDim;
const kvHeads = geo.kvHeads;
const kvDim = kvHeads * headDim;
const vocab = 512;
/** Query heads only cost forward time: as many as fill the hidden size, at least one per KV head. */
const headsFor = (h: number) => kvHeads * Math.max(1, Math.floor(h / kvDim));
/** Float32 weight bytes of the model (embedding tied). */
const weightBytes = (h: number, inter: number) =>
  4 * (vocab * h + layers * (2 * headsFor(h) * headDim * h + 2 * kvDim * h + 3 * inter * h + 2 * h));
// ONNX protobuf holds at most 2 GB (buildLlamaGraph writes no external data).
const ONNX_LIMIT = 2e9;
// A layer's keys and values have rank <= hidden: hidden >= kvDim keeps them full rank as in the
// real model; the default is the largest multiple of 128 up to min(kvDim, 1024) that fits ONNX.
let hidden = int('hidden', a.hidden, tiny ? 128 : Math.min(kvDim, 1024));
const interOf = (h: number) => int('intermediate', a.intermediate, h);
if (a.hidden === undefined && !tiny) while (hidden > 128 && weightBytes(hidden, interOf(hidden)) > ONNX_LIMIT) hidden -= 128;
const intermediate = interOf(hidden);
const heads = headsFor(hidden);
if (weightBytes(hidden, intermediate) > ONNX_LIMIT)
  fail(
    `${(weightBytes(hidden, intermediate) / 1e9).toFixed(2)} GB of weights exceed ONNX's 2 GB limit; pass a smaller --hidden or --intermediate`,
  );
const decay = Number(a.decay);
if (!(Number.isFinite(decay) && decay >= 0)) fail(`--decay must be a number >= 0, got "${a.decay}"`);
const seed = Number(a.seed);
if (!(Number.isInteger(seed) && seed >= 0)) fail(`--seed must be an integer >= 0, got "${a.seed}"`);
const tokens = int('tokens', a.tokens, tiny ? 4096 : 16384);
const heldout = int('heldout', a.heldout, tiny ? 512 : 4096);
const report = int('report', a.report, tiny ? 512 : 8192);
const ratios = a.ratio!.split(',').map(Number);
const grouping: Grouping = ['auto', 'layer', 'all'].includes(a.grouping!) ? (a.grouping as Grouping) : int('grouping', a.grouping, 1);
const attentionWindow = geo.window
  ? Array.from({ length: layers }, (_, l) => ((l + 1) % geo.window!.period === 0 ? null : geo.window!.size))
  : undefined;

const name = `${a.geometry}-l${layers}-h${hidden}-i${intermediate}-q${heads}-kv${kvHeads}-d${headDim}-decay${decay}-s${seed}`;
const modelDir = join(tmpdir(), 'kvtc-scale', name);
const outDir = a.out ?? join(tmpdir(), 'kvtc-scale', `${name}-profile`);

let peakRss = 0;
const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 250);
sampler.unref();
const gb = gib;

console.error(`${geo.real}; ONNX weights ${(weightBytes(hidden, intermediate) / 1e9).toFixed(2)} GB`);
console.error(
  `model: ${layers} layers × ${kvHeads} KV heads × ${headDim} (${heads} query heads), hidden ${hidden}, intermediate ${intermediate}, vocab ${vocab}, k/v singular values ∝ (j+1)^-${decay}` +
    (attentionWindow ? `, sliding window ${geo.window!.size} on ${attentionWindow.filter((w) => w).length} of ${layers} layers` : ''),
);
if (hidden < kvDim)
  console.error(
    `note: hidden ${hidden} < ${kvDim} KV features per layer: each layer's keys and values have rank <= ${hidden} (the real model's are full rank), so the ratio and error are optimistic`,
  );
if (attentionWindow)
  console.error(
    `note: calibrate cuts its text into sequences of min(max_position_embeddings, 512) tokens, so a ${geo.window!.size}-token window never masks anything there: these caches are the same as an all-global model's`,
  );

if (a['dry-run']) process.exit(0);

let buildSeconds: number | null = null;
if (existsSync(join(modelDir, 'onnx', 'model.onnx'))) console.error(`model: cached in ${modelDir}`);
else {
  const t = performance.now();
  // A directory without its graph is an interrupted build (the graph is written last).
  if (existsSync(modelDir)) await rm(modelDir, { recursive: true, force: true });
  await buildRandomLlama({
    out: modelDir,
    layers,
    hidden,
    heads,
    kvHeads,
    headDim,
    intermediate,
    vocab,
    seed,
    kvSpectrum: { decay },
    ...(attentionWindow ? { attentionWindow } : {}),
    name,
  });
  buildSeconds = (performance.now() - t) / 1000;
  console.error(`model: built in ${buildSeconds.toFixed(1)} s into ${modelDir} (peak RSS so far ${gb(vmHwm())})`);
  if (!a['build-only']) console.error('note: the peak memory below includes this build; run with --build-only first for calibration alone');
}
if (a['build-only']) process.exit(0);

let lastStage = '';
const t0 = performance.now();
const r = await calibrate({
  modelDir,
  data: a.data ?? [DEFAULT_CALIBRATION_DIR],
  ratios,
  tokens,
  heldout,
  report,
  grouping,
  chunk: int('chunk', a.chunk, 256),
  seed,
  device: 'cpu',
  out: outDir,
  force: true,
  ...(a.memory !== undefined ? { memory: Number(a.memory) * 2 ** 30 } : {}),
  ...(a['two-level-rank'] !== undefined ? { twoLevelRank: int('two-level-rank', a['two-level-rank'], 4096) } : {}),
  // A named multi-layer grouping whose float64 covariance exceeds this (GiB) is fitted two-level
  // (calibrate's library option covarianceBudget): e.g. --grouping all --two-level-rank 12288 --covariance-budget 1.
  ...(a['covariance-budget'] !== undefined ? { covarianceBudget: Number(a['covariance-budget']) * 2 ** 30 } : {}),
  ...(a.eigensolver !== undefined ? { eigensolver: a.eigensolver as EigensolverChoice } : {}),
  onProgress: (e) => {
    if (e.stage === lastStage) return;
    lastStage = e.stage;
    console.error(`[${((performance.now() - t0) / 1000).toFixed(0).padStart(5)} s] ${e.stage}${e.detail ? ` (${e.detail})` : ''}`);
  },
});
clearInterval(sampler);
peakRss = Math.max(peakRss, process.memoryUsage().rss);
const hwm = vmHwm();

/** Bytes of every file under dir. */
function dirBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    n += e.isDirectory() ? dirBytes(p) : statSync(p).size;
  }
  return n;
}
const bytesWritten = r.profiles.reduce((n, p) => n + (existsSync(p.profile) ? dirBytes(p.profile) : 0), 0);

// Stages in pipeline order, then any others the result has.
const ORDER = ['load', 'tokenize', 'forward', 'covariance', 'eigen', 'error_tables', 'fit_wall', 'allocation', 'measure', 'write', 'total'];
const stageKeys = [...ORDER.filter((k) => k in r.seconds), ...Object.keys(r.seconds).filter((k) => !ORDER.includes(k))];
const extra = r as unknown as Record<string, unknown>;

console.log(`\n${geo.real}`);
console.log(`eigensolver: ${r.eigensolver}`);
console.log(
  `${r.tokens} fit + ${r.heldout_tokens} tuning + ${r.report_tokens} report tokens (sequences of ${r.seq_len}); grouping ${String(grouping)}; fitted: ${r.groupings.join(', ')}` +
    (r.groupings_skipped.length ? `; skipped: ${r.groupings_skipped.map((s) => s.grouping).join(', ')}` : '') +
    (Array.isArray(extra.groupings_sketched) && extra.groupings_sketched.length
      ? `; sketched: ${extra.groupings_sketched.join(', ')}`
      : ''),
);
console.log('\nstage seconds (eigen and error_tables: CPU seconds summed over bases; fit_wall: their wall time):');
console.log(`| ${stageKeys.join(' | ')} |`);
console.log(`|${stageKeys.map(() => '---').join('|')}|`);
console.log(`| ${stageKeys.map((k) => r.seconds[k].toFixed(1)).join(' | ')} |`);
console.log(
  '\n| geometry | layers × KV × dim | hidden | fit tokens | ratio target | grouping chosen | ratio (report) | key / value rel. error | total s | peak RSS (VmHWM) | bytes written |',
);
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
for (const p of r.profiles) {
  console.log(
    `| ${a.geometry} | ${layers} × ${kvHeads} × ${headDim} | ${hidden} | ${r.tokens} | ${p.ratio_target} | ${p.grouping} | ${p.ratio_compressed.toFixed(2)}x (blob ${p.ratio_blob.toFixed(2)}x) | ${p.rel_error.key.toFixed(4)} / ${p.rel_error.value.toFixed(4)} | ${r.seconds.total?.toFixed(0)} | ${gb(hwm ?? peakRss)} | ${bytesWritten} |`,
  );
}
console.log(
  `\npeak RSS sampled ${gb(peakRss)}, VmHWM ${gb(hwm)} (the whole process: worker threads share its RSS); build ${buildSeconds === null ? 'cached' : `${buildSeconds.toFixed(1)} s`}`,
);
if (r.memory_estimate)
  console.log(
    `kvtc's estimate, printed before the work: peak ${gb(r.memory_estimate.peak)} (capture ${gb(r.memory_estimate.capture)}, fit ${gb(r.memory_estimate.fit)}, report ${gb(r.memory_estimate.report)}); measured / estimated ${((hwm ?? peakRss) / r.memory_estimate.peak).toFixed(3)}`,
  );

if (a.json) {
  const json = {
    geometry: a.geometry,
    real: geo.real,
    model: {
      dir: modelDir,
      layers,
      kvHeads,
      headDim,
      heads,
      hidden,
      intermediate,
      vocab,
      decay,
      seed,
      attentionWindow: attentionWindow ?? null,
    },
    build_seconds: buildSeconds,
    args: {
      tokens,
      heldout,
      report,
      grouping: String(grouping),
      ratios,
      chunk: Number(a.chunk),
      data: a.data ?? [DEFAULT_CALIBRATION_DIR],
    },
    seconds: r.seconds,
    peak_rss_sampled_bytes: peakRss,
    vm_hwm_bytes: hwm,
    bytes_written: bytesWritten,
    result: r,
  };
  writeFileSync(a.json, `${JSON.stringify(json, null, 2)}\n`);
  console.error(`wrote ${a.json}`);
}

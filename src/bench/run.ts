// Tested by test/bench/bench.test.ts.
/**
 * `kvtc bench`: for one cache per model, in one run — codec throughput against memcpy and
 * zlib, ratio and error of kvtc and the baseline codecs, restore (decode a blob) versus
 * recompute (chunked prefill) at several contexts, and calibration time by stage.
 * Every timing is a median over `repeats` runs with min and max. Never prints.
 */
import { availableParallelism, cpus, loadavg, platform, release, totalmem } from 'node:os';
import { createRequire } from 'node:module';
import { BASELINE_NAMES, runBaseline } from '../codec/baselines.js';
import { storedComponents } from '../codec/payload.js';
import { readTextSources } from '../io/text.js';
import { loadModel } from '../model/load.js';
import { ModelRunner } from '../model/runner.js';
import type { KvCache, ModelSpec } from '../model/types.js';
import type { KvtcCodec } from '../codec/codec.js';
import type { Device } from '../onnx/session.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../paths.js';
import { noProgress, type ProgressFn } from '../progress.js';
import { codecFromProfile } from '../profile/codec-from-profile.js';
import { dynamoCodec } from '../dynamo/dynamo-codec.js';
import { readDynamoProfile, type DynamoProfile } from '../dynamo/profile.js';
import { checkDynamoProfileForModel, checkProfileForModel, dynamoProfileModelDifferences } from '../profile/compat.js';
import { readProfile, type Profile } from '../profile/read.js';
import { fp16Bytes, prefixCache, rawFp16, relativeError } from './cache.js';
import { measureLimits } from './limits.js';
import { benchCacheDir, ensureGqaModel, ensureProfile, GQA_SHAPE, QUICK_SHAPE, type CalibrationRecord } from './models.js';
import { summarize, summarizeStages, timeRepeats, type Summary } from './stats.js';

export interface BenchOptions {
  /** A user model: bench only it (with `profile`, or its committed profile). */
  modelDir?: string;
  profile?: string;
  /** Tokens of cache for the codec measurements (clipped to each model's positions). */
  tokens: number;
  repeats: number;
  contexts: number[];
  quick: boolean;
  device: Device;
  /** A `kvtc calibrate --target dynamo` profile: its model also gets a "dynamo" row (emulated kernels). */
  dynamoProfile?: string;
  onProgress?: ProgressFn;
}

export interface Throughput {
  name: string;
  /** What the row measures, in words. */
  what: string;
  seconds: Summary;
  /** fp16 bytes of the cache / median seconds, in MB/s (10^6 bytes). */
  mbps: number;
}

export interface CodecRow {
  name: string;
  bytes: number;
  ratio: number;
  relError: { key: number; value: number };
  /** kvtc (and dynamo): ratio over the compressed tokens (sink/window tokens and their bytes left out). */
  ratioCompressed?: number;
}

export interface RestoreRow {
  context: number;
  fp16Bytes: number;
  blobBytes: number;
  recompute: Summary;
  restore: Summary;
  /** median recompute / median restore */
  speedup: number;
}

export interface ModelBench {
  name: string;
  dir: string;
  profile: string;
  shape: { layers: number; heads: number; kvHeads: number; headDim: number; kvDtype: string; maxPositions: number };
  tokens: number;
  fp16Bytes: number;
  throughput: Throughput[];
  /** Single-threaded stage breakdowns (seconds). */
  encodeStages: Record<string, Summary>;
  decodeStages: Record<string, Summary>;
  /**
   * What decode has to do beyond inflate, for the physical floor: the reconstruction's
   * floating-point work (2·n·k·p over the plans: n compressed tokens, k stored components,
   * p features) and the bytes of the cache it writes, next to the blob inflate reads.
   */
  decodeWork: { gflop: number; blobBytes: number; outputBytes: number };
  codecs: CodecRow[];
  protection: { sink: number; window: number };
  restore: RestoreRow[];
  /** Prefill chunk used for recompute. */
  chunk: number;
}

export interface BenchResult {
  machine: { cpu: string; cores: number; memoryGiB: number; os: string; node: string; onnxruntime: string; loadavg: number[] };
  settings: { tokens: number; repeats: number; recomputeRepeats: number; contexts: number[]; quick: boolean; device: Device };
  gpu: string;
  models: ModelBench[];
  calibration?: CalibrationRecord;
  seconds: number;
}

const CHUNK = 512;

function ortVersion(): string {
  try {
    return (createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** Token ids of real text (the calibration corpus), at least `n` of them. */
async function textTokens(encode: (s: string) => number[], n: number): Promise<number[]> {
  const texts = await readTextSources([DEFAULT_CALIBRATION_DIR]);
  const ids: number[] = [];
  for (const t of texts) {
    ids.push(...encode(t.text));
    if (ids.length >= n) break;
  }
  while (ids.length < n) ids.push(...ids.slice(0, n - ids.length));
  return ids.slice(0, n);
}

async function benchModel(
  name: string,
  modelDir: string,
  profileDir: string,
  opts: BenchOptions,
  recomputeRepeats: number,
): Promise<ModelBench> {
  const progress = opts.onProgress ?? noProgress;
  // The profile is read and matched to the model before minutes of prefill, not after.
  const profile = await readProfile(profileDir);
  const model = await loadModel(modelDir, { device: opts.device });
  const spec = model.spec;
  const contexts = [...new Set(opts.contexts.map((c) => Math.min(c, spec.maxPositions)))].sort((a, b) => a - b);
  const tokens = Math.min(opts.tokens, spec.maxPositions);
  let recompute: { marks: Record<number, number[]>; full: KvCache };
  let dynamo: DynamoProfile | undefined;
  try {
    checkProfileForModel(profile, model, 'the model being benchmarked');
    if (opts.dynamoProfile) {
      const d = await readDynamoProfile(opts.dynamoProfile);
      if (!dynamoProfileModelDifferences(d.manifest, model).length) dynamo = d;
      else if (opts.modelDir) checkDynamoProfileForModel(d, model, 'the model being benchmarked');
    }
    const ids = await textTokens((s) => model.tokenizer.encode(s), Math.max(tokens, ...contexts));
    recompute = await timeRecompute(name, new ModelRunner(model), ids, contexts, recomputeRepeats, progress);
  } finally {
    await model.session.release();
  }
  const { marks, full } = recompute;
  const cache = prefixCache(full, tokens);
  const bytes = fp16Bytes(cache);

  const single = await codecFromProfile(profile, { device: opts.device, threads: 1 });
  // Every core: the graphs run on a worker thread, overlapped with the host stages (onnxruntime-node
  // runs a session on its caller's thread; more intra-op threads per session measured 2x slower).
  const multi = await codecFromProfile(profile, { device: opts.device, threads: 1, transformThread: availableParallelism() > 1 }).catch(
    async (e) => {
      await single.release();
      throw e;
    },
  );
  try {
    return await benchCodec({
      name,
      modelDir,
      profileDir,
      opts,
      profile,
      spec,
      tokens,
      contexts,
      cache,
      bytes,
      full,
      marks,
      single,
      multi,
      progress,
      dynamo,
    });
  } finally {
    await single.release();
    await multi.release();
  }
}

/** Recompute: one chunked prefill of all `ids` per repeat, timed at each context's mark. */
async function timeRecompute(
  name: string,
  runner: ModelRunner,
  ids: number[],
  contexts: number[],
  recomputeRepeats: number,
  progress: ProgressFn,
): Promise<{ marks: Record<number, number[]>; full: KvCache }> {
  const total = ids.length;

  // Recompute: one chunked prefill of `total` tokens per repeat, timed at each context's mark —
  // the same work as a prefill of exactly that many tokens (causal, same chunks).
  progress({ stage: `${name}: warming up the model` });
  await runner.prefill(ids.slice(0, Math.min(CHUNK, total)), { chunk: CHUNK });
  const marks: Record<number, number[]> = Object.fromEntries(contexts.map((c) => [c, []]));
  let full: KvCache | undefined;
  for (let r = 0; r < recomputeRepeats; r++) {
    const t0 = performance.now();
    const res = await runner.prefill(ids, {
      chunk: CHUNK,
      onProgress: (e) => {
        const at = (performance.now() - t0) / 1000;
        if (e.done !== undefined && marks[e.done]) marks[e.done].push(at);
        progress({ stage: `${name}: recompute (prefill) ${r + 1}/${recomputeRepeats}`, done: e.done, total: e.total, unit: 'tok' });
      },
    });
    full = res.cache;
  }
  // Contexts that are not a multiple of the chunk have no mark: time them on their own.
  for (const c of contexts) {
    if (marks[c].length) continue;
    for (let r = 0; r < recomputeRepeats; r++) {
      const t = performance.now();
      await runner.prefill(ids.slice(0, c), { chunk: CHUNK });
      marks[c].push((performance.now() - t) / 1000);
    }
  }
  return { marks, full: full! };
}

interface CodecBenchInput {
  name: string;
  modelDir: string;
  profileDir: string;
  opts: BenchOptions;
  profile: Profile;
  spec: ModelSpec;
  tokens: number;
  contexts: number[];
  cache: KvCache;
  bytes: number;
  full: KvCache;
  marks: Record<number, number[]>;
  single: KvtcCodec;
  multi: KvtcCodec;
  /** The dynamo profile made for this model, if one was given. */
  dynamo?: DynamoProfile;
  progress: ProgressFn;
}

/** Throughput, ratio/error and restore timings of the profile's codec on the captured cache. */
async function benchCodec(x: CodecBenchInput): Promise<ModelBench> {
  const { name, modelDir, profileDir, opts, profile, spec, tokens, contexts, cache, bytes, full, marks, single, multi, progress } = x;
  const throughput: Throughput[] = [];
  const row = (n: string, what: string, s: Summary) => throughput.push({ name: n, what, seconds: s, mbps: bytes / 1e6 / s.median });

  progress({ stage: `${name}: memcpy and zlib on the raw fp16 cache` });
  const raw = rawFp16(cache);
  const lim = await measureLimits(raw, opts.repeats);
  row('memcpy', 'copy of the raw fp16 cache (TypedArray.set)', lim.memcpy);
  row('zlib deflate', 'DEFLATE (Z_RLE, as kvtc blobs) of the raw fp16 cache, 1 thread', lim.deflate);
  row('zlib inflate', 'inflateRawSync of that, 1 thread', lim.inflate);

  progress({ stage: `${name}: kvtc encode/decode` });
  const first = await single.encode(cache);
  let blob = first.blob;
  const ratioCompressed = first.stats.ratioCompressed;
  const encStages: Record<string, number>[] = [];
  const decStages: Record<string, number>[] = [];
  const enc1 = await timeRepeats(
    opts.repeats,
    async () => {
      const r = await single.encode(cache);
      blob = r.blob;
      encStages.push({ ...r.stats.seconds });
    },
    0,
  );
  let decoded: KvCache = cache;
  const dec1 = await timeRepeats(opts.repeats, async () => {
    const r = await single.decode(blob);
    decoded = r.cache;
    decStages.push({ ...r.stats.seconds });
  });
  const encN = await timeRepeats(opts.repeats, () => multi.encode(cache));
  const decN = await timeRepeats(opts.repeats, () => multi.decode(blob));
  const cores = availableParallelism();
  row('kvtc encode', 'KvtcCodec.encode, ORT sessions with 1 intra-op thread', enc1);
  row('kvtc decode', 'KvtcCodec.decode, ORT sessions with 1 intra-op thread', dec1);
  row(`kvtc encode (${cores} cores)`, 'the same with the ORT graphs on a worker thread, overlapped with the host stages', encN);
  row(`kvtc decode (${cores} cores)`, 'the same with the ORT graphs on a worker thread, overlapped with the host stages', decN);

  progress({ stage: `${name}: baselines` });
  const sink = profile.manifest.settings.sink;
  const window = profile.manifest.settings.window;
  const codecs: CodecRow[] = [
    { name: 'kvtc', bytes: blob.byteLength, ratio: bytes / blob.byteLength, relError: relativeError(cache, decoded), ratioCompressed },
  ];
  if (x.dynamo) {
    // NVIDIA Dynamo's KVTC kernels, emulated exactly (src/dynamo): they protect no sink or window.
    const r = await dynamoCodec(x.dynamo).apply(cache);
    codecs.push({
      name: 'dynamo',
      bytes: r.bytes,
      ratio: bytes / r.bytes,
      relError: relativeError(cache, r.cache),
      ratioCompressed: r.compressedBytes > 0 ? (r.compressedTokens * (bytes / cache.tokens)) / r.compressedBytes : undefined,
    });
  }
  for (const b of BASELINE_NAMES) {
    const r = runBaseline(b, cache, { sinkTokens: sink, recentTokens: window });
    codecs.push({ name: b, bytes: r.bytes, ratio: bytes / r.bytes, relError: relativeError(cache, r.cache) });
  }

  const nCompressed = Math.max(0, tokens - sink - window);
  let flop = 0;
  for (const p of profile.plans) flop += 2 * nCompressed * storedComponents(p).length * p.dim;
  const decodeWork = {
    gflop: flop / 1e9,
    blobBytes: blob.byteLength,
    outputBytes: spec.layers * 2 * spec.kvHeads * tokens * spec.headDim * 4,
  };

  const restore: RestoreRow[] = [];
  for (const c of contexts) {
    progress({ stage: `${name}: restore ${c} tokens` });
    const prefix = prefixCache(full, c);
    const b = (await single.encode(prefix)).blob;
    const s = await timeRepeats(opts.repeats, () => multi.decode(b));
    const rc = summarize(marks[c]);
    restore.push({
      context: c,
      fp16Bytes: fp16Bytes(prefix),
      blobBytes: b.byteLength,
      recompute: rc,
      restore: s,
      speedup: rc.median / s.median,
    });
  }
  return {
    name,
    dir: modelDir,
    profile: profileDir,
    shape: {
      layers: spec.layers,
      heads: spec.heads,
      kvHeads: spec.kvHeads,
      headDim: spec.headDim,
      kvDtype: spec.kvDtype,
      maxPositions: spec.maxPositions,
    },
    tokens,
    fp16Bytes: bytes,
    throughput,
    encodeStages: summarizeStages(encStages),
    decodeStages: summarizeStages(decStages),
    decodeWork,
    codecs,
    protection: { sink, window },
    restore,
    chunk: CHUNK,
  };
}

export async function runBench(opts: BenchOptions): Promise<BenchResult> {
  const t0 = performance.now();
  const progress = opts.onProgress ?? noProgress;
  const recomputeRepeats = Math.min(opts.repeats, 3);
  const models: ModelBench[] = [];
  let calibration: CalibrationRecord | undefined;
  const calTokens = opts.quick ? 1024 : 2048;
  const calHeldout = 512;
  if (opts.modelDir) {
    const model = await loadModel(opts.modelDir);
    const { dir, calibration: cal } = await ensureProfile(opts.modelDir, model.name, {
      explicit: opts.profile,
      tokens: calTokens,
      heldout: calHeldout,
      onProgress: progress,
    });
    await model.session.release();
    calibration = cal;
    models.push(await benchModel(model.name, opts.modelDir, dir, opts, recomputeRepeats));
  } else {
    const small = await ensureProfile(DEFAULT_MODEL_DIR, 'stories260k', {
      explicit: opts.profile,
      tokens: calTokens,
      heldout: calHeldout,
      onProgress: progress,
    });
    models.push(await benchModel('stories260k', DEFAULT_MODEL_DIR, small.dir, opts, recomputeRepeats));
    const shape = opts.quick ? QUICK_SHAPE : GQA_SHAPE;
    const dir = await ensureGqaModel(shape, progress);
    const big = await ensureProfile(dir, `gqa-${shape.layers}x${shape.kvHeads}x${shape.headDim}`, {
      tokens: calTokens,
      heldout: calHeldout,
      onProgress: progress,
    });
    calibration = big.calibration ? { ...big.calibration, model: `random GQA ${shape.layers}L h${shape.hidden}` } : small.calibration;
    models.push(await benchModel(`random GQA ${shape.layers}L h${shape.hidden}`, dir, big.dir, opts, recomputeRepeats));
  }
  const c = cpus();
  return {
    machine: {
      cpu: c[0]?.model ?? 'unknown',
      cores: availableParallelism(),
      memoryGiB: Math.round(totalmem() / 2 ** 30),
      os: `${platform()} ${release()}`,
      node: process.version,
      onnxruntime: `onnxruntime-node ${ortVersion()}`,
      loadavg: loadavg().map((x) => Math.round(x * 100) / 100),
    },
    settings: {
      tokens: opts.tokens,
      repeats: opts.repeats,
      recomputeRepeats,
      contexts: opts.contexts,
      quick: opts.quick,
      device: opts.device,
    },
    gpu:
      opts.device === 'cuda'
        ? 'measured with --device cuda'
        : 'not measured: this run used the CPU execution provider (no GPU figures are reported)',
    models,
    calibration,
    seconds: (performance.now() - t0) / 1000,
  };
}

export { benchCacheDir };

/**
 * `kvtc calibrate`: capture → covariance → eigen → held-out error tables → DP → measure → write.
 *
 * Memory is bounded by p² per basis (streaming covariance) plus the held-out caches, never by
 * --tokens. Several target ratios share everything up to the error tables; each gets its own
 * allocation, measurement and profile.
 */
import { join } from 'node:path';
import { BUDGET_SCALE_STEPS, searchBudgetScale } from './budget-scale.js';
import type { EntropyCoder } from '../codec/blob.js';
import { CovarianceAccumulator, createGramKernel, type GramKernel } from '../fit/covariance.js';
import { gatherFeatures } from '../fit/features.js';
import { allocate, type AllocationTables } from '../fit/fit.js';
import type { KvKind } from '../codec/types.js';
import { KvtcError } from '../errors.js';
import { loadModel } from '../model/load.js';
import { ModelRunner } from '../model/runner.js';
import type { KvCache } from '../model/types.js';
import type { Device } from '../onnx/session.js';
import { noProgress, type ProgressFn } from '../progress.js';
import { checkOutputDir } from '../io/output.js';
import { isProfileDir, readManifest, writeProfile } from '../profile/io.js';
import { fitBases } from './fit-pool.js';
import { manifestDraft } from './manifest.js';
import { blobSizeRatio, measurePlans } from './measure.js';
import { readCalibrationTokens, splitSequences, type SkippedFile } from './sequences.js';
import { profileOutDirs } from './outputs.js';

export type Grouping = 'layer' | 'all' | number;

export interface CalibrateOptions {
  /** The ratios were asked for explicitly (--ratio): the default profile name then carries them (outputs.ts). */
  ratiosGiven?: boolean;
  modelDir: string;
  data: string[];
  ratios: number[];
  tokens: number;
  heldout: number;
  sink: number;
  window: number;
  grouping: Grouping;
  chunk: number;
  seed: number;
  device: Device;
  /** Output directory; with several ratios, `-r<ratio>` is appended to each. */
  out?: string;
  force: boolean;
  entropy?: EntropyCoder;
  onProgress?: ProgressFn;
  signal?: AbortSignal;
  /** A file in a --data directory that is not UTF-8 text is an error instead of skipped (--strict-data). */
  strictData?: boolean;
}

export interface RatioResult {
  profile: string;
  profile_id: string;
  /** True when the output already held this exact profile (nothing was rewritten). */
  unchanged: boolean;
  /** True when an earlier run of the same job (model, data, settings) was replaced. */
  replaced: boolean;
  ratio_target: number;
  /** Measured on held-out caches: compressed tokens only, and the whole blob. */
  ratio: number;
  ratio_compressed: number;
  ratio_blob: number;
  context_tokens: number;
  rel_error: { key: number; value: number; key_per_layer: number[]; value_per_layer: number[] };
  bits_per_token: number;
  budget_scale: number;
}

export interface CalibrateResult {
  model: string;
  model_dir: string;
  tokens: number;
  /** What --tokens asked for; `tokens` is less when the data ran out (above the minimum). */
  tokens_requested: number;
  heldout_tokens: number;
  sequences: number;
  seq_len: number;
  plans: number;
  profiles: RatioResult[];
  seconds: Record<string, number>;
  /** Files in --data directories skipped because they are not UTF-8 text. */
  skipped_data: SkippedFile[];
}

export const MIN_RATIO = 1.5;
export const MAX_RATIO = 64;

/**
 * Without --force, an output directory that already holds a kvtc profile of another model (or an
 * unreadable one) is refused before any work; one of the same model is compared setting by
 * setting when the new profile is written (a re-run of the same job is allowed). Other files in
 * the directory (a model's own files) never matter: kvtc writes only its two profile files.
 */
async function checkProfileTarget(dir: string, want: { model: string }): Promise<void> {
  if (!isProfileDir(dir)) return;
  let model: string | undefined;
  try {
    model = (await readManifest(dir)).manifest.model.fingerprint.id;
  } catch {
    model = undefined;
  }
  if (model !== want.model) {
    throw new KvtcError('OUTPUT_EXISTS', `output ${dir} already holds a kvtc profile${model ? ` of another model (fingerprint ${model})` : ' that kvtc cannot read'}`, {
      fix: 'Pass --force to replace its kvtc-profile.json and kvtc-profile.safetensors (nothing else in the directory is touched), or choose another --out.',
      context: { out: dir },
    });
  }
}

/** Layer groups sharing one basis. */
export function layerGroups(layers: number, grouping: Grouping): number[][] {
  const k = grouping === 'layer' ? 1 : grouping === 'all' ? layers : grouping;
  const out: number[][] = [];
  for (let l = 0; l < layers; l += k) out.push(Array.from({ length: Math.min(k, layers - l) }, (_, i) => l + i));
  return out;
}

interface PlanState {
  kind: KvKind;
  layers: number[];
  dim: number;
  acc: CovarianceAccumulator;
  kernel: GramKernel;
  tables?: AllocationTables;
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) {
    throw new KvtcError('INTERRUPTED', 'calibration interrupted; nothing was written', { fix: 'Re-run the command to calibrate.', exitCode: 130 });
  }
}

export async function calibrate(opts: CalibrateOptions): Promise<CalibrateResult> {
  const progress = opts.onProgress ?? noProgress;
  const entropy = opts.entropy ?? 'deflate-rle';
  const seconds: Record<string, number> = {};
  const t0 = performance.now();
  let mark = t0;
  const lap = (name: string) => {
    const now = performance.now();
    seconds[name] = (seconds[name] ?? 0) + (now - mark) / 1000;
    mark = now;
  };
  for (const r of opts.ratios) {
    if (!(r >= MIN_RATIO && r <= MAX_RATIO)) {
      throw new KvtcError('USAGE', `--ratio ${r} is out of range`, { fix: `Give a target compression ratio between ${MIN_RATIO} and ${MAX_RATIO} (the paper's operating point is 20).`, exitCode: 2 });
    }
  }

  progress({ stage: 'loading model' });
  const model = await loadModel(opts.modelDir, { device: opts.device });
  const spec = model.spec;
  const runner = new ModelRunner(model);
  const outDirs = profileOutDirs({ out: opts.out, modelName: model.name, ratios: opts.ratios, ratiosGiven: opts.ratiosGiven });
  // Writable, and (without --force) free of another job's profile: checked now, not after the work.
  for (const d of outDirs) {
    checkOutputDir(d);
    if (!opts.force) await checkProfileTarget(d, { model: model.fingerprint.id });
  }
  lap('load');

  progress({ stage: 'reading calibration text' });
  // Streamed and tokenized in chunks, only as far as needed (see sequences.ts).
  const data = await readCalibrationTokens(opts.data, model.tokenizer, { fitTokens: opts.tokens, heldoutTokens: opts.heldout, strict: opts.strictData, signal: opts.signal, onProgress: progress });
  const seqLen = Math.min(spec.maxPositions, 512);
  if (opts.sink + opts.window >= seqLen) {
    throw new KvtcError('USAGE', `--sink ${opts.sink} + --window ${opts.window} leave no compressed tokens in the ${seqLen}-token held-out sequences`, { fix: `Keep sink + window below ${seqLen}.`, exitCode: 2 });
  }
  const maxDim = Math.max(...layerGroups(spec.layers, opts.grouping).map((g) => g.length * spec.kvHeads * spec.headDim));
  const split = splitSequences(
    data.tokens,
    model.tokenizer.bosTokenId,
    { seqLen, fitTokens: opts.tokens, heldoutTokens: opts.heldout, seed: opts.seed, minFitTokens: Math.max(2 * maxDim, 256), sources: opts.data.join(', ') },
  );
  lap('tokenize');

  const groups = layerGroups(spec.layers, opts.grouping);
  const states: PlanState[] = [];
  for (const layers of groups) {
    for (const kind of ['key', 'value'] as KvKind[]) {
      const dim = layers.length * spec.kvHeads * spec.headDim;
      const kernel = await createGramKernel(dim, { device: opts.device });
      states.push({ kind, layers, dim, kernel, acc: new CovarianceAccumulator(dim, kernel) });
    }
  }

  // Fit pass: stream sequences through the model, accumulate covariances, drop the caches.
  const fitTokens = split.fit.length * seqLen;
  let done = 0;
  let scratch = new Float32Array(0);
  for (const ids of split.fit) {
    checkAbort(opts.signal);
    let t = performance.now();
    const { cache } = await runner.prefill(ids, { chunk: opts.chunk });
    seconds.forward = (seconds.forward ?? 0) + (performance.now() - t) / 1000;
    t = performance.now();
    const n = cache.tokens - opts.sink;
    for (const s of states) {
      if (scratch.length < n * s.dim) scratch = new Float32Array(n * s.dim);
      const X = gatherFeatures(cache, { kind: s.kind, layers: s.layers }, spec.rope, opts.sink, cache.tokens, scratch);
      await s.acc.add(X, n);
    }
    seconds.covariance = (seconds.covariance ?? 0) + (performance.now() - t) / 1000;
    done += ids.length;
    progress({ stage: 'capturing calibration KV', done, total: fitTokens, unit: 'tokens' });
  }
  mark = performance.now();

  // Held-out pass: keep the caches, for error tables and for measuring real blobs.
  const heldCaches: KvCache[] = [];
  done = 0;
  for (const ids of split.heldout) {
    checkAbort(opts.signal);
    heldCaches.push((await runner.prefill(ids, { chunk: opts.chunk })).cache);
    done += ids.length;
    progress({ stage: 'capturing held-out KV', done, total: split.heldout.length * seqLen, unit: 'tokens' });
  }
  await model.session.release();
  lap('forward');

  // Bases and measured error tables, shared by every ratio (on worker threads when large).
  const jobs = states.map((s) => {
    const cov = s.acc.finish();
    const parts = heldCaches.map((c) => gatherFeatures(c, { kind: s.kind, layers: s.layers }, spec.rope, opts.sink, c.tokens));
    const H = parts.reduce((a, p) => a + p.length / s.dim, 0);
    const X = new Float32Array(H * s.dim);
    let at = 0;
    for (const p of parts) {
      X.set(p, at);
      at += p.length;
    }
    return { kind: s.kind, layers: s.layers, dim: s.dim, cov: cov.cov, mean: cov.mean, heldout: X, heldoutTokens: H };
  });
  for (const s of states) await s.kernel.dispose?.();
  checkAbort(opts.signal);
  progress({ stage: 'fitting bases (eigen + held-out error tables)', done: 0, total: jobs.length, unit: 'bases' });
  const fitted = await fitBases(jobs, { onDone: (d) => progress({ stage: 'fitting bases (eigen + held-out error tables)', done: d, total: jobs.length, unit: 'bases' }) });
  // Stage times are summed over bases (CPU seconds); the wall time of the stage is fit_wall.
  seconds.eigen = fitted.reduce((a, f) => a + f.seconds.eigen, 0);
  seconds.error_tables = fitted.reduce((a, f) => a + f.seconds.tables, 0);
  const plansBase = states.map((state, i) => ({ state: Object.assign(state, { tables: fitted[i].tables }) }));
  seconds.fit_wall = (performance.now() - mark) / 1000;
  mark = performance.now();

  const sourcesMeta = data.sources.map((t) => ({ name: t.name, sha256: t.sha256, bytes: t.bytes }));
  const profiles: RatioResult[] = [];
  const sharedSettings = { sink: opts.sink, window: opts.window, entropy, device: opts.device };
  for (const [ri, ratio] of opts.ratios.entries()) {
    checkAbort(opts.signal);
    // The DP budget counts raw bits; DEFLATE and headers move the real ratio. Search the budget
    // scale so the ratio measured on held-out blobs lands on the target (from above when possible).
    const plansFor = (scale: number) => plansBase.map((b) => allocate(b.state.tables!, Math.max(0, Math.floor(((16 * b.state.dim) / ratio) * scale))));
    // Sizing needs no model graphs: the held-out coefficients on the full basis are already in
    // the tables, so each candidate is quantized, packed and deflated exactly as encode does.
    const measureAt = (scale: number) => blobSizeRatio(plansFor(scale), plansBase.map((b) => b.state.tables!), heldCaches, spec, opts.sink, opts.window, entropy);
    const best = searchBudgetScale(measureAt, ratio, (it, b) =>
      progress({ stage: `allocating bits for ${ratio}x`, done: it, total: BUDGET_SCALE_STEPS, unit: 'steps', detail: `measured ${b.ratio.toFixed(2)}x at budget scale ${b.scale.toFixed(3)}` }));
    lap('allocation');
    const plans = plansFor(best.scale);
    progress({ stage: `measuring ${ratio}x on held-out text` });
    const m = await measurePlans(spec, plans, heldCaches, sharedSettings, true);
    lap('measure');
    const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
    const draft = manifestDraft({
      model, ratio, opts, granule: plansBase[0].state.tables!.granule, entropy, sources: sourcesMeta,
      split: { fit: split.fit.length, heldout: split.heldout.length, seqLen }, m,
    });
    checkAbort(opts.signal);
    progress({ stage: 'writing profile' });
    const manifest = await writeProfile(outDirs[ri], draft, plans, { force: opts.force });
    lap('write');
    profiles.push({
      profile: outDirs[ri],
      profile_id: manifest.profile_id,
      unchanged: manifest.unchanged === true,
      replaced: manifest.replaced === true,
      ratio_target: ratio,
      ratio: m.ratioBlob,
      ratio_compressed: m.ratioCompressed,
      ratio_blob: m.ratioBlob,
      context_tokens: m.contextTokens,
      rel_error: { key: mean(m.relKey), value: mean(m.relValue), key_per_layer: m.relKey, value_per_layer: m.relValue },
      bits_per_token: manifest.plans.reduce((a, p) => a + p.bits_per_token, 0),
      budget_scale: best.scale,
    });
  }
  seconds.total = (performance.now() - t0) / 1000;
  return {
    model: model.name,
    model_dir: model.dir,
    tokens: split.fit.length * seqLen,
    tokens_requested: opts.tokens,
    heldout_tokens: split.heldout.length * seqLen,
    sequences: split.fit.length + split.heldout.length,
    seq_len: seqLen,
    plans: states.length,
    profiles,
    seconds,
    skipped_data: data.skipped,
  };
}

/**
 * `kvtc calibrate`, as a sequence of named steps:
 *
 *   openModel → readSplit (fit / tuning / report sequences) → captureFit (covariances of every
 *   candidate grouping, one forward pass) → captureCaches (tuning, report) → for each candidate
 *   grouping: fitCandidate (eigen + error tables on the tuning caches) → for each ratio:
 *   allocateForRatio (DP + budget-scale search, sized and measured on the tuning caches) →
 *   chooseGrouping (smallest tuning error; larger bases only when over 2% better) → measurePlans on the report caches → write.
 *
 * Three disjoint splits of the calibration text, so the numbers a user reads are not tuned on:
 * the fit split gives the PCA bases; the tuning split the clip ranges (cross-validated within it,
 * static-range.ts), error tables, the bit allocation, the budget scale and the choice of
 * grouping; the report split only the ratio and error printed and recorded in the profile.
 *
 * Memory is bounded by p² per basis and candidate (streaming covariance) plus the tuning and
 * report caches, never by --tokens. Several target ratios share everything up to the error
 * tables; each gets its own allocation, grouping choice, measurement and profile.
 */
import { totalmem } from 'node:os';
import { BUDGET_SCALE_STEPS, searchBudgetScale, type BudgetScale } from './budget-scale.js';
import type { EntropyCoder } from '../codec/blob.js';
import { CovarianceAccumulator, createGramKernel, type GramKernel } from '../fit/covariance.js';
import { TWO_LEVEL_RANK } from '../fit/two-level.js';
import { type TwoLevelBasis, TwoLevelFit, type TwoLevelSummary } from './two-level-fit.js';
import { cacheSet, ParkedCaches, type CacheSet } from './cache-park.js';
import { checkSpillSpace } from './feature-spill.js';
import { checkMemory, estimateMemory, type MemoryEstimate } from './memory-plan.js';
import { statSync } from 'node:fs';
import { gatherFeatures } from '../fit/features.js';
import { BasisAllocator, maxRankForRatios, type AllocationTables } from '../fit/fit.js';
import { STORED_TYPES } from '../codec/quant.js';
import type { BasisPlan, KvKind } from '../codec/types.js';
import { CALIBRATE_DEFAULTS } from '../defaults.js';
import { KvtcError, calibrationInterrupted } from '../errors.js';
import { loadModel, type LoadedModel } from '../model/load.js';
import { ModelRunner } from '../model/runner.js';
import type { KvCache, ModelSpec } from '../model/types.js';
import type { Device } from '../onnx/session.js';
import { noProgress, type ProgressFn } from '../progress.js';
import {
  describeEigensolver,
  EXTERNAL_EIGEN_MIN_P,
  resolveEigensolver,
  type EigensolverChoice,
  type ExternalEigen,
} from '../fit/eigen-python.js';
import type { EigenWork } from '../fit/eigen-types.js';
import { checkOutputDir } from '../io/output.js';
import { isProfileDir, writeProfile, type ManifestDraft } from '../profile/write.js';
import { readManifest } from '../profile/read.js';
import type { Equivalence } from '../profile/equivalence.js';
import { BlockEigenGate, fitBases, type FitJob, type LazyFitJob } from './fit-pool.js';
import { manifestDraft } from './manifest.js';
import { blobSizeRatio, measurePlans, type Measurement } from './measure.js';
import { readCalibrationTokens, splitSequences, type CalibrationTokens, type SequenceSplit, type SkippedFile } from './sequences.js';
import { profileOutDirs } from './outputs.js';
import { ropeSafeChunk } from '../rope/freqs.js';
import { checkModelRope, type RopeCheckReport } from '../rope/data-check.js';
import { stageTimer, type StageTimer } from './stage-times.js';

/** Layers per basis: one per layer, k consecutive layers, all layers, or chosen by measurement. */
export type Grouping = 'auto' | 'layer' | 'all' | number;
/** A grouping that names one layout (what 'auto' chooses among). */
export type FixedGrouping = Exclude<Grouping, 'auto'>;

export interface CalibrateOptions {
  /** The ratios were asked for explicitly (--ratio): the default profile name then carries them (outputs.ts). */
  ratiosGiven?: boolean;
  modelDir: string;
  data: string[];
  ratios: number[];
  /** Fit tokens (PCA bases). */
  tokens: number;
  /** Tuning tokens (clip ranges, error tables, bit allocation, budget scale, grouping choice). */
  heldout: number;
  /** Report tokens (the printed and recorded ratio and error). Default DEFAULT_REPORT_TOKENS. */
  report?: number;
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
  /**
   * Bytes of float64 covariance held before multi-layer bases are fitted two-level instead
   * (groupingCandidates): 'auto''s budget (default AUTO_COVARIANCE_BUDGET_BYTES) and, when set, the
   * limit of a fixed grouping too (default half the machine's memory). Tests lower it to exercise
   * the two-level fit on small models.
   */
  covarianceBudget?: number;
  /** R, the reduced columns per kind of the two-level fit (default TWO_LEVEL_RANK; --two-level-rank). */
  twoLevelRank?: number;
  /** The dense eigensolver for large bases (--eigensolver; default 'auto': NumPy where the machine's Python has it, eigen-python.ts). */
  eigensolver?: EigensolverChoice;
  /** What `eigensolver` resolved to (calibrate sets it; undefined: kvtc's own). */
  external?: ExternalEigen;
  /** Memory budget in bytes (--memory; default half the machine's): groupings are chosen within it and the estimate is checked against it before any work. */
  memory?: number;
}

/** Report tokens when none are asked for: src/defaults.ts says why 8192. */
export const DEFAULT_REPORT_TOKENS = CALIBRATE_DEFAULTS.reportTokens;

export interface RelError {
  key: number;
  value: number;
  /** 95% bootstrap intervals over the report sequences (measure.ts), when there are enough of them. */
  key_ci95?: [number, number];
  value_ci95?: [number, number];
  key_per_layer: number[];
  value_per_layer: number[];
}

/** One candidate grouping at one ratio, measured on the tuning split (what 'auto' chose by). */
export interface GroupingCandidate {
  grouping: string;
  ratio_compressed: number;
  rel_error: { key: number; value: number };
}

export interface RatioResult {
  profile: string;
  profile_id: string;
  /** True when the output already held this profile, identical or equivalent within tolerance (nothing was rewritten; profile_id is the kept one's). */
  unchanged: boolean;
  /** Set when the kept profile differs from this run's within tolerance (another CPU's last float bits; src/profile/equivalence.ts). */
  equivalent?: Equivalence;
  /** True when an earlier run of the same job (model, data, settings) was replaced. */
  replaced: boolean;
  /** Why it was replaced: the first difference beyond tolerance. */
  difference?: string;
  ratio_target: number;
  /** The grouping the profile uses (chosen by measurement when --grouping auto). */
  grouping: string;
  /** Measured on the report split (text neither fitting nor tuning saw): compressed tokens only, and the whole blob. */
  ratio_compressed: number;
  ratio_blob: number;
  context_tokens: number;
  /** Report split. */
  rel_error: RelError;
  /** The same plans on the tuning split, for comparison (the allocation was solved there). */
  tuning_rel_error: { key: number; value: number };
  bits_per_token: number;
  budget_scale: number;
  /** Stored static components whose range is the tuned clip, and those left at min/max (cross-validation, static-range.ts). */
  clip_ranges: { tuned: number; min_max: number };
  /** With --grouping auto: every candidate at this ratio, on the tuning split. */
  grouping_candidates: GroupingCandidate[];
}

export interface CalibrateResult {
  model: string;
  model_dir: string;
  tokens: number;
  /** What --tokens asked for; `tokens` is less when the data ran out (above the minimum). */
  tokens_requested: number;
  /** Tuning tokens (the held-out split the allocation is solved on). */
  heldout_tokens: number;
  report_tokens: number;
  sequences: number;
  seq_len: number;
  plans: number;
  /** The groupings fitted ('auto': the candidates; otherwise the one asked for), and those left out for their memory. */
  groupings: string[];
  groupings_skipped: SkippedGrouping[];
  /** Groupings among `groupings` fitted two-level (src/fit/two-level.ts): past the covariance budget or TWO_LEVEL_MIN_FEATURES. */
  groupings_sketched: string[];
  /** Bases fitted by the truncated randomized eigensolver (large p; fit-pool.ts), over all candidates. */
  randomized_bases: number;
  /** Bases fitted two-level (src/fit/two-level.ts) instead of from a p×p covariance, over all candidates. */
  sketched_bases: number;
  /** The two-level fit's reduction, when any grouping used it. */
  two_level?: TwoLevelSummary;
  /** The memory estimate checked before the work started (memory-plan.ts), bytes. */
  memory_estimate?: MemoryEstimate;
  /** The RoPE-from-data check (src/rope/data-check.ts) on the fit caches: it passed, or did not run (reason). */
  rope_check: { checked: boolean; pairs: number; reason?: string };
  profiles: RatioResult[];
  seconds: Record<string, number>;
  /** Files in --data directories skipped because they are not UTF-8 text. */
  skipped_data: SkippedFile[];
  /** The dense eigensolver of the large bases (--eigensolver): kvtc's own, or NumPy's / torch's and its version. */
  eigensolver: string;
  /** What the user should know about the fit (underdeterminedBasis); the CLI prints each as a warning. */
  warnings: string[];
}

export const MIN_RATIO = 1.5;
export const MAX_RATIO = 64;
/**
 * 'auto' fits every candidate grouping in the one fit pass: its cost over a single grouping is
 * the candidates' covariances (8·p² bytes per basis, Σ p² multiply-adds per token). Candidates
 * are taken from one layer per basis upwards while their covariances together stay within this.
 */
export const AUTO_COVARIANCE_BUDGET_BYTES = 4 * 2 ** 30;

/** Layer groups sharing one basis. */
export function layerGroups(layers: number, grouping: FixedGrouping): number[][] {
  const k = grouping === 'layer' ? 1 : grouping === 'all' ? layers : grouping;
  const out: number[][] = [];
  for (let l = 0; l < layers; l += k) out.push(Array.from({ length: Math.min(k, layers - l) }, (_, i) => l + i));
  return out;
}

type FeatureGeometry = Pick<ModelSpec, 'layers' | 'kvHeads' | 'headDim'> & { valueDim?: number };

/** Features per token of a basis over `layers` layers: kv heads × head_dim for keys, × value_head_dim for values (MLA latents differ). */
export function featureDim(spec: FeatureGeometry, kind: KvKind, layers: number): number {
  return layers * spec.kvHeads * (kind === 'value' ? (spec.valueDim ?? spec.headDim) : spec.headDim);
}

/** Bytes of the float64 covariances (keys and values) one grouping accumulates. */
export function groupingCovarianceBytes(spec: FeatureGeometry, grouping: FixedGrouping): number {
  return layerGroups(spec.layers, grouping).reduce(
    (a, g) => a + 8 * (featureDim(spec, 'key', g.length) ** 2 + featureDim(spec, 'value', g.length) ** 2),
    0,
  );
}

/**
 * Multi-layer groupings of a model whose keys or values have more features over all layers than
 * this are fitted two-level (src/fit/two-level.ts) whatever their covariances' size: their
 * dense eigensolves (p³ per basis) would take most of an hour on 8B geometry, where the two-level
 * fit of every grouping together costs about one R×R eigensolve. Models up to this size
 * (SmolLM2-135M: 5,760; Gemma 3 270M: 4,608) keep their exact covariances.
 */
export const TWO_LEVEL_MIN_FEATURES = 8192;

/** Features over all layers of one kind. */
function kindFeatures(spec: FeatureGeometry, kind: KvKind): number {
  return featureDim(spec, kind, spec.layers);
}

/**
 * Bytes the two-level fit holds (once, for every two-level grouping): per kind the reduced
 * covariance's running sums and result (2 × 8R²), and the per-layer covariances when the
 * 'layer' grouping does not already hold them. Its fp16 spill is on disk (spillBytes).
 */
export function twoLevelBytes(spec: FeatureGeometry, rank: number = TWO_LEVEL_RANK, withLayerCovariances = true): number {
  let b = 0;
  for (const kind of ['key', 'value'] as KvKind[]) {
    const R = Math.min(rank, kindFeatures(spec, kind));
    b += 2 * 8 * R * R;
    if (withLayerCovariances) b += spec.layers * 8 * featureDim(spec, kind, 1) ** 2;
  }
  return b;
}

/** Bytes the two-level fit spills to disk: float16 features of both kinds over all layers, per fit token. */
export function spillBytes(spec: FeatureGeometry, tokens: number): number {
  return 2 * tokens * (kindFeatures(spec, 'key') + kindFeatures(spec, 'value'));
}

/** A grouping 'auto' left out for memory. */
export interface SkippedGrouping {
  grouping: string;
  /** Its float64 covariances. */
  covariance_bytes: number;
  /** Left out because kvtc's estimate of the run's peak with it passed the budget: that estimate. */
  estimated_peak_bytes?: number;
}

/** What groupingCandidates decides. */
export interface GroupingCandidates {
  fit: FixedGrouping[];
  /**
   * Left out: even the two-level fit does not fit the memory limit, or (`estimated_peak_bytes`,
   * kvtc's estimate of the run with it) the whole run would not.
   */
  skipped: SkippedGrouping[];
  /**
   * Groupings in `fit` fitted two-level (src/fit/two-level.ts): their covariances exceed the
   * budget, or the model passes TWO_LEVEL_MIN_FEATURES. Absent when none. (The name predates the
   * two-level fit: these were fitted from a streaming sketch before.)
   */
  sketched?: string[];
}

/**
 * The groupings to fit: the one asked for, or for 'auto' one layer per basis, then 2, 4, 8, …
 * consecutive layers, then all layers (the paper finds more layers per basis better at high
 * ratios; one layer per basis is always a candidate). A multi-layer grouping is fitted two-level
 * (src/fit/two-level.ts: one R×R reduced covariance per kind serves them all) when the model
 * passes TWO_LEVEL_MIN_FEATURES; otherwise candidates are taken in order with their float64
 * covariances while those fit AUTO_COVARIANCE_BUDGET_BYTES, and fitted two-level beyond. A
 * grouping is left out if even the two-level fit would pass `memoryLimit`, and then, while
 * `o.estimate` (kvtc's estimate of the whole run's peak, memory-plan.ts) passes it, the largest
 * multi-layer groupings go first: auto runs within the budget instead of being refused. An explicit
 * grouping keeps its exact covariance up to `o.fixedCovarianceLimit` (default `memoryLimit`)
 * whatever the model's size, while the run's estimate with it fits `memoryLimit`, and is fitted
 * two-level beyond.
 */
export function groupingCandidates(
  spec: FeatureGeometry,
  grouping: Grouping,
  budget = AUTO_COVARIANCE_BUDGET_BYTES,
  memoryLimit = totalmem() / 2,
  o: { ratios?: number[]; fixedCovarianceLimit?: number; rank?: number; estimate?: (c: GroupingCandidates) => number } = {},
): GroupingCandidates {
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
  const wide = Math.max(kindFeatures(spec, 'key'), kindFeatures(spec, 'value')) > TWO_LEVEL_MIN_FEATURES;
  const multi = (g: FixedGrouping) => layerGroups(spec.layers, g).some((l) => l.length > 1);
  if (grouping !== 'auto') {
    const bytes = groupingCovarianceBytes(spec, grouping);
    const limit = Math.min(memoryLimit, o.fixedCovarianceLimit ?? memoryLimit);
    // Asked for by name: its exact covariance wherever that fits, however long it takes, and the
    // run with it fits the budget by kvtc's estimate (its dense eigensolves hold several p × p
    // arrays); otherwise two-level.
    const exact: GroupingCandidates = { fit: [grouping], skipped: [] };
    if (!multi(grouping) || (bytes <= limit && (o.estimate === undefined || o.estimate(exact) <= memoryLimit))) {
      if (bytes > memoryLimit)
        throw new KvtcError(
          'USAGE',
          `--grouping ${grouping} needs ${gib(bytes)} of float64 covariance, more than the memory budget of ${gib(memoryLimit)} (--memory; default half of this machine's ${gib(totalmem())})`,
          {
            fix: 'Use --grouping auto, raise --memory, or run on a machine with more memory.',
          },
        );
      return exact;
    }
    const two = twoLevelBytes(spec, o.rank);
    if (two > memoryLimit) {
      throw new KvtcError(
        'USAGE',
        `--grouping ${grouping} needs ${gib(bytes)} of float64 covariance, or ${gib(two)} for the two-level fit (p = ${Math.max(...layerGroups(spec.layers, grouping).flatMap((g) => [featureDim(spec, 'key', g.length), featureDim(spec, 'value', g.length)]))} features per basis), more than the memory budget of ${gib(memoryLimit)} (--memory; default half of this machine's ${gib(totalmem())})`,
        {
          fix: 'Use --grouping auto (it fits the groupings that fit in memory and keeps the best), --grouping layer, or a smaller number of layers per basis.',
        },
      );
    }
    return { fit: [grouping], skipped: [], sketched: [String(grouping)] };
  }
  const all: FixedGrouping[] = ['layer'];
  for (let k = 2; k < spec.layers; k *= 2) all.push(k);
  if (spec.layers > 1) all.push('all');
  const fit: FixedGrouping[] = [];
  const skipped: SkippedGrouping[] = [];
  const sketched: string[] = [];
  let used = 0;
  let twoLevelHeld = false;
  for (const g of all) {
    const bytes = groupingCovarianceBytes(spec, g);
    if (fit.length === 0 || (!(wide && multi(g)) && used + bytes <= budget)) {
      fit.push(g);
      used += bytes;
      continue;
    }
    // The two-level fit's memory is shared by every grouping that uses it ('layer', first, holds the per-layer covariances).
    const two = twoLevelHeld ? 0 : twoLevelBytes(spec, o.rank, false);
    if (used + two <= memoryLimit) {
      fit.push(g);
      sketched.push(String(g));
      used += two;
      twoLevelHeld = true;
    } else skipped.push({ grouping: String(g), covariance_bytes: bytes });
  }
  const out = (): GroupingCandidates => (sketched.length ? { fit, skipped, sketched } : { fit, skipped });
  for (let peak = o.estimate?.(out()); peak !== undefined && peak > memoryLimit && fit.length > 1; peak = o.estimate?.(out())) {
    const g = fit.pop()!;
    if (sketched.at(-1) === String(g)) sketched.pop();
    skipped.unshift({ grouping: String(g), covariance_bytes: groupingCovarianceBytes(spec, g), estimated_peak_bytes: peak });
  }
  return out();
}

/** Bytes of a model's weights on disk (its graph and external data). */
export function modelBytes(files: { onnx: string; externalData?: string }): number {
  let b = 0;
  for (const f of [files.onnx, files.externalData]) {
    try {
      if (f) b += statSync(f).size;
    } catch {
      // A file the loader read a moment ago; if it is gone, the estimate is the lower for it.
    }
  }
  return b;
}

/**
 * The memory estimate of a calibration (memory-plan.ts) against its budget (opts.memory, default
 * half the machine's), refused (USAGE) before any work when over it.
 */
export function planMemory(spec: FeatureGeometry, candidates: GroupingCandidates, opts: MemoryOptions, weights: number): MemoryEstimate {
  return checkBudget(memoryEstimate(spec, candidates, opts, weights), opts);
}

/** The options a memory estimate reads. */
export type MemoryOptions = Pick<CalibrateOptions, 'heldout' | 'ratios' | 'twoLevelRank' | 'memory' | 'external'> & { report?: number };

/** Refuses (USAGE) an estimate over opts.memory (default half the machine's); returns it otherwise. */
export function checkBudget(e: MemoryEstimate, opts: Pick<CalibrateOptions, 'memory'>): MemoryEstimate {
  checkMemory(e, { budgetGiven: opts.memory !== undefined, totalBytes: totalmem() });
  return e;
}

/** planMemory's estimate without the check (calibrate-kv combines its ranks' first). */
export function memoryEstimate(
  spec: FeatureGeometry,
  candidates: GroupingCandidates,
  opts: MemoryOptions,
  weights: number,
  sequenceTokens?: number,
): MemoryEstimate {
  const sketched = new Set(candidates.sketched ?? []);
  return estimateMemory(spec, {
    groupings: candidates.fit.map((g) => ({ groups: layerGroups(spec.layers, g), twoLevel: sketched.has(String(g)) })),
    heldout: opts.heldout,
    report: opts.report ?? DEFAULT_REPORT_TOKENS,
    ratios: opts.ratios,
    rank: opts.twoLevelRank,
    ...(opts.external ? { external: opts.external } : {}),
    modelBytes: weights,
    budget: opts.memory ?? totalmem() / 2,
    ...(sequenceTokens !== undefined ? { sequenceTokens } : {}),
  });
}

/** A block eigensolve's phases (fit-pool.ts blockEigen) as progress: one stage per phase, its operations in GFLOP. */
export function eigenWorkProgress(stage: string, progress: ProgressFn): EigenWork {
  return (phase, done, total) =>
    progress({
      stage: `${stage}: ${phase}`,
      ...(total > 0 ? { done: Math.round(done / 1e9), total: Math.max(1, Math.round(total / 1e9)), unit: 'GFLOP' } : {}),
    });
}

/** Every calibration target's checkpoint: after an abort (Ctrl-C), stop before anything is written. */
export function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw calibrationInterrupted();
}

/** Out-of-range ratios are usage errors before any work. */
export function checkRatios(ratios: number[]): void {
  for (const r of ratios) {
    if (!(r >= MIN_RATIO && r <= MAX_RATIO)) {
      throw new KvtcError('USAGE', `--ratio ${r} is out of range`, {
        fix: `Give a target compression ratio between ${MIN_RATIO} and ${MAX_RATIO} (the paper's operating point is 20).`,
      });
    }
  }
}

/** The profile a calibration target writes, as openModel checks its output directories. */
export interface ProfileOutput {
  /** As OUTPUT_EXISTS names it: "kvtc profile", "dynamo profile". */
  label: string;
  /** Appended to the default directory name (outputs.ts): '' for kvtc, '-dynamo'. */
  suffix?: string;
  /** Whether dir holds a profile of this target. */
  holds(dir: string): boolean;
  /** The model fingerprint recorded in dir's profile (rejects when it cannot be read). */
  fingerprint(dir: string): Promise<string>;
  /** The fix OUTPUT_EXISTS suggests. */
  fix: string;
}

export const KVTC_OUTPUT: ProfileOutput = {
  label: 'kvtc profile',
  holds: isProfileDir,
  fingerprint: async (dir) => (await readManifest(dir)).manifest.model.fingerprint.id,
  fix: 'Pass --force to replace its kvtc-profile.json and kvtc-profile.safetensors (nothing else in the directory is touched), or choose another --out.',
};

/**
 * Without --force, an output directory that already holds a profile of another model (or an
 * unreadable one) is refused before any work; one of the same model is compared setting by
 * setting when the new profile is written (a re-run of the same job is allowed). Other files in
 * the directory (a model's own files) never matter: kvtc writes only its two profile files.
 */
export async function checkProfileTarget(dir: string, want: { model: string }, output: ProfileOutput): Promise<void> {
  if (!output.holds(dir)) return;
  let model: string | undefined;
  try {
    model = await output.fingerprint(dir);
  } catch {
    model = undefined;
  }
  if (model !== want.model) {
    throw new KvtcError(
      'OUTPUT_EXISTS',
      `output ${dir} already holds a ${output.label}${model ? ` of another model (fingerprint ${model})` : ' that kvtc cannot read'}`,
      {
        fix: output.fix,
        context: { out: dir },
      },
    );
  }
}

/** What openModel reads of a target's options. */
export type OpenModelOptions = Pick<CalibrateOptions, 'modelDir' | 'device' | 'out' | 'ratios' | 'ratiosGiven' | 'force'>;

/**
 * Step 1: the model, and the output directories checked writable (and free, without --force)
 * before any work. `checkModel` lets a target refuse the model first (Dynamo: its block size).
 */
export async function openModel(
  opts: OpenModelOptions,
  output: ProfileOutput = KVTC_OUTPUT,
  checkModel?: (model: LoadedModel) => void,
): Promise<{ model: LoadedModel; outDirs: string[] }> {
  const model = await loadModel(opts.modelDir, { device: opts.device });
  try {
    checkModel?.(model);
    const outDirs = profileOutDirs({
      out: opts.out,
      modelName: model.name,
      ratios: opts.ratios,
      ratiosGiven: opts.ratiosGiven,
      suffix: output.suffix,
    });
    for (const d of outDirs) {
      checkOutputDir(d);
      if (!opts.force) await checkProfileTarget(d, { model: model.fingerprint.id }, output);
    }
    return { model, outDirs };
  } catch (e) {
    await model.session.release();
    throw e;
  }
}

/** What readSequences reads of a target's options. */
export type ReadSequencesOptions = Pick<CalibrateOptions, 'data' | 'tokens' | 'heldout' | 'report' | 'seed' | 'strictData' | 'signal'>;

/**
 * Calibration text → sequences of `seqLen` tokens split into fit, tuning and report sets
 * (disjoint, seeded), for any target; `report` 0 gives no report split.
 */
export async function readSequences(
  opts: ReadSequencesOptions,
  tokenizer: LoadedModel['tokenizer'],
  o: { seqLen: number; minFitTokens: number },
  progress: ProgressFn,
): Promise<{ data: CalibrationTokens; split: SequenceSplit }> {
  const report = opts.report ?? DEFAULT_REPORT_TOKENS;
  // Streamed and tokenized in chunks, only as far as needed (see sequences.ts).
  const data = await readCalibrationTokens(opts.data, tokenizer, {
    fitTokens: opts.tokens,
    heldoutTokens: opts.heldout,
    reportTokens: report,
    strict: opts.strictData,
    signal: opts.signal,
    onProgress: progress,
  });
  const split = splitSequences(data.tokens, tokenizer.bosTokenId, {
    seqLen: o.seqLen,
    fitTokens: opts.tokens,
    heldoutTokens: opts.heldout,
    reportTokens: report,
    seed: opts.seed,
    minFitTokens: o.minFitTokens,
    sources: opts.data.join(', '),
  });
  return { data, split };
}

/**
 * The widest basis of the candidate groupings (every basis needs at least 2p fit tokens for a
 * full-rank covariance); a two-level grouping (GroupingCandidates.sketched) counts its per-layer
 * features and the reduced columns R (at most TWO_LEVEL_RANK) instead of p.
 */
export function maxFeatureDim(
  spec: FeatureGeometry,
  candidates: FixedGrouping[] | GroupingCandidates,
  rank: number = TWO_LEVEL_RANK,
): number {
  const c: GroupingCandidates = Array.isArray(candidates) ? { fit: candidates, skipped: [] } : candidates;
  const sketched = new Set(c.sketched ?? []);
  return Math.max(
    ...c.fit.flatMap((g) =>
      layerGroups(spec.layers, g).flatMap((l) =>
        (['key', 'value'] as KvKind[]).map((kind) => {
          const p = featureDim(spec, kind, l.length);
          return sketched.has(String(g)) ? Math.max(featureDim(spec, kind, 1), Math.min(p, rank, kindFeatures(spec, kind))) : p;
        }),
      ),
    ),
  );
}

/**
 * The widest basis among the candidates when it has more components than the fit has feature
 * vectors (fit tokens after the sinks): a covariance of n vectors has rank at most n − 1, so its
 * components past that carry no fit variance (their directions are arbitrary within the rest).
 * The columns are p_G for an exact covariance and the reduced columns (≤ --two-level-rank) for a
 * two-level basis. Undefined when every basis is determined by the fit.
 */
export function underdeterminedBasis(
  spec: FeatureGeometry,
  candidates: GroupingCandidates,
  fitVectors: number,
  rank: number = TWO_LEVEL_RANK,
): { grouping: string; kinds: KvKind[]; columns: number; twoLevel: boolean; fit_vectors: number } | undefined {
  const sketched = new Set(candidates.sketched ?? []);
  let widest: { grouping: string; kinds: KvKind[]; columns: number; twoLevel: boolean } | undefined;
  for (const g of candidates.fit) {
    const twoLevel = sketched.has(String(g));
    for (const layers of layerGroups(spec.layers, g)) {
      for (const kind of ['key', 'value'] as KvKind[]) {
        const p = featureDim(spec, kind, layers.length);
        const columns = twoLevel ? Math.min(p, rank, kindFeatures(spec, kind)) : p;
        // On a tie the wider grouping (candidates come narrowest first): a two-level group's
        // columns are its share of R, at most min(p_G, R), reached by the all-layer one.
        if (widest?.grouping === String(g) && columns === widest.columns) {
          if (!widest.kinds.includes(kind)) widest.kinds.push(kind);
        } else if (!widest || columns >= widest.columns) widest = { grouping: String(g), kinds: [kind], columns, twoLevel };
      }
    }
  }
  return widest && widest.columns >= fitVectors ? { ...widest, fit_vectors: fitVectors } : undefined;
}

/** The warning for underdeterminedBasis (calibrate and calibrate --kv print it; --json carries it). */
export function underdeterminedWarning(u: NonNullable<ReturnType<typeof underdeterminedBasis>>, what: '--tokens' | 'dump'): string {
  const n = (x: number) => x.toLocaleString('en-US');
  const name = u.grouping === 'all' ? 'all-layer' : u.grouping === 'layer' ? 'per-layer' : `${u.grouping}-layer`;
  return (
    `the ${name} ${u.kinds.join(' and ')} bases have ${u.twoLevel ? `up to ${n(u.columns)} reduced columns (--two-level-rank)` : `${n(u.columns)} features`} but the fit has ${n(u.fit_vectors)} feature vectors: ` +
    `at most ${n(Math.max(0, u.fit_vectors - 1))} of their components carry fit variance, and the fit says nothing of the rest. ` +
    `Fit on at least ${n(2 * u.columns)} tokens (${what === 'dump' ? 'dump more sequences, and raise --tokens if you set it lower' : 'raise --tokens, and add --data text if it runs short'})` +
    (u.twoLevel ? ` or lower --two-level-rank to ${n(Math.max(64, Math.floor(u.fit_vectors / 2)))}` : '') +
    '.'
  );
}

/**
 * The external eigensolver of a run (eigen-python.ts resolveEigensolver): asked for by name, or
 * with 'auto' when a basis of this model can reach EXTERNAL_EIGEN_MIN_P features (its features
 * over all layers), so small models never start a Python to ask.
 */
export function eigensolverFor(spec: FeatureGeometry, opts: Pick<CalibrateOptions, 'eigensolver' | 'device'>): ExternalEigen | undefined {
  const choice = opts.eigensolver ?? 'auto';
  if (choice === 'auto' && Math.max(kindFeatures(spec, 'key'), kindFeatures(spec, 'value')) < EXTERNAL_EIGEN_MIN_P) return undefined;
  return resolveEigensolver(choice, opts.device);
}

/** describeEigensolver, saying so when no basis of the model reaches the external solver's size. */
export function eigensolverUsed(spec: FeatureGeometry, external: ExternalEigen | undefined): string {
  const d = describeEigensolver(external);
  if (!external || Math.max(kindFeatures(spec, 'key'), kindFeatures(spec, 'value')) >= EXTERNAL_EIGEN_MIN_P) return d;
  return `${d}, unused: every basis of this model has fewer than ${EXTERNAL_EIGEN_MIN_P} features (kvtc's own solver fitted them)`;
}

/** A warning when --two-level-rank was given but no basis of the run is fitted two-level (it changed nothing). */
export function unusedRankWarning(rank: number | undefined, candidates: GroupingCandidates): string[] {
  if (rank === undefined || candidates.sketched?.length) return [];
  return [
    `--two-level-rank ${rank} changed nothing: no basis of this run is fitted two-level (groupings fitted: ${candidates.fit.join(', ')}). ` +
      `Multi-layer bases are fitted two-level when the model has more than ${TWO_LEVEL_MIN_FEATURES.toLocaleString('en-US')} key or value features over all layers, or when their covariances pass the memory budget.`,
  ];
}

/**
 * The fit tokens the data must give: twice the widest basis's columns (a full-rank covariance
 * with room), or the --tokens asked for when that is less (at least 256).
 */
export function fitTokensNeeded(maxDim: number, requested: number): number {
  return Math.max(Math.min(2 * maxDim, requested), 256);
}

/** Step 2: calibration text → fit, tuning and report sequences (disjoint, seeded). */
export async function readSplit(
  opts: CalibrateOptions,
  spec: ModelSpec,
  tokenizer: LoadedModel['tokenizer'],
  candidates: FixedGrouping[] | GroupingCandidates,
  progress: ProgressFn,
): Promise<{ data: CalibrationTokens; split: SequenceSplit; seqLen: number }> {
  const seqLen = Math.min(spec.maxPositions, 512);
  if (opts.sink + opts.window >= seqLen) {
    throw new KvtcError(
      'USAGE',
      `--sink ${opts.sink} + --window ${opts.window} leave no compressed tokens in the ${seqLen}-token held-out sequences`,
      { fix: `Keep sink + window below ${seqLen}.` },
    );
  }
  // Every basis needs at least 2p fit tokens for a full-rank covariance (two-level: 2R); the data
  // must give that much, or what --tokens asks for when it asks for less (the result then warns:
  // underdeterminedBasis).
  const minFitTokens = fitTokensNeeded(maxFeatureDim(spec, candidates, opts.twoLevelRank), opts.tokens);
  const { data, split } = await readSequences(opts, tokenizer, { seqLen, minFitTokens }, progress);
  return { data, split, seqLen };
}

/** One basis being accumulated: a (layer group, kind) of one candidate grouping. */
export type BasisState = {
  kind: KvKind;
  layers: number[];
  dim: number;
} & (
  | { acc: CovarianceAccumulator; kernel: GramKernel; twoLevel?: undefined }
  | {
      /** Fitted two-level (src/fit/two-level.ts) from the reduction this object shares across groupings. */
      twoLevel: TwoLevelFit;
      acc?: undefined;
      kernel?: undefined;
    }
);

/**
 * The bases of one grouping, each accumulating a float64 covariance, or with `twoLevel` fitted
 * from that shared reduction instead.
 */
export async function basisStates(spec: ModelSpec, grouping: FixedGrouping, device: Device, twoLevel?: TwoLevelFit): Promise<BasisState[]> {
  const states: BasisState[] = [];
  for (const layers of layerGroups(spec.layers, grouping)) {
    for (const kind of ['key', 'value'] as KvKind[]) {
      const dim = featureDim(spec, kind, layers.length);
      if (twoLevel) {
        states.push({ kind, layers, dim, twoLevel });
        continue;
      }
      const kernel = await createGramKernel(dim, { device });
      states.push({ kind, layers, dim, kernel, acc: new CovarianceAccumulator(dim, kernel) });
    }
  }
  return states;
}

/**
 * basisStates of every candidate; the two-level ones (GroupingCandidates.sketched) share one
 * TwoLevelFit, whose per-layer covariances are the 'layer' candidate's when there is one, and
 * otherwise one more group of states, last, that no candidate fits (fitAccumulator fills it).
 */
export async function candidateStates(
  spec: ModelSpec,
  candidates: GroupingCandidates,
  device: Device,
  o: { rank?: number; external?: ExternalEigen } = {},
): Promise<BasisState[][]> {
  const sketched = new Set(candidates.sketched ?? []);
  const direct = await Promise.all(
    candidates.fit.map((g) => (sketched.has(String(g)) ? Promise.resolve([]) : basisStates(spec, g, device))),
  );
  if (sketched.size === 0) return direct;
  const li = candidates.fit.indexOf('layer');
  const perLayer = li >= 0 ? direct[li] : await basisStates(spec, 'layer', device);
  const twoLevel = new TwoLevelFit(
    spec,
    Array.from({ length: spec.layers }, (_, l) => l),
    perLayer.map((s) => ({ kind: s.kind, layer: s.layers[0], acc: s.acc! })),
    { device, rank: o.rank, ...(o.external ? { external: o.external } : {}) },
  );
  const states = await Promise.all(
    candidates.fit.map((g, gi) => (sketched.has(String(g)) ? basisStates(spec, g, device, twoLevel) : Promise.resolve(direct[gi]))),
  );
  return li >= 0 ? states : [...states, perLayer];
}

/** The two-level fit the states share, if any. */
export function twoLevelOf(states: BasisState[][]): TwoLevelFit | undefined {
  return states.flat().find((s) => s.twoLevel)?.twoLevel;
}

/**
 * The fit pass of any target: streams the fit sequences through the model and hands each cache
 * to `accumulate` (timed as covariance), dropping it at once; checks for an abort between them.
 */
export async function streamFit(
  runner: ModelRunner,
  seqs: number[][],
  o: { chunk: number; signal?: AbortSignal; progress: ProgressFn; timer: StageTimer },
  accumulate: (cache: KvCache, ids: number[]) => Promise<void>,
): Promise<void> {
  const total = seqs.reduce((a, s) => a + s.length, 0);
  let done = 0;
  for (const ids of seqs) {
    checkAbort(o.signal);
    let t = performance.now();
    const { cache } = await runner.prefill(ids, { chunk: o.chunk });
    o.timer.add('forward', (performance.now() - t) / 1000);
    t = performance.now();
    await accumulate(cache, ids);
    o.timer.add('covariance', (performance.now() - t) / 1000);
    done += ids.length;
    o.progress({ stage: 'capturing calibration KV', done, total, unit: 'tokens' });
  }
}

/** Hands each fit cache (and its token ids, when known) to `visit`, one at a time: a model run or a KV dump. */
export type CacheStream = (visit: (cache: KvCache, ids?: ArrayLike<number>) => Promise<void>) => Promise<void>;

/** The fit pass's state for one spec: covariances of every candidate basis and the RoPE data check. */
export interface FitAccumulator {
  /** Adds one fit cache (and its token ids, when known) to every basis. */
  add(cache: KvCache, ids?: ArrayLike<number>): Promise<void>;
  /** The RoPE data check's outcome (checked, or why not). */
  ropeCheck(): RopeCheckReport;
}

/**
 * Step 3, for any source of caches: each fit cache goes into the covariance of every basis of
 * every candidate grouping; the RoPE of `spec` is checked against the first caches that come with
 * token ids and enough repeated tokens (ROPE_MISMATCH). Without ids the check does not run.
 */
export function fitAccumulator(spec: ModelSpec, bases: BasisState[][], o: { sink: number }): FitAccumulator {
  let scratch = new Float32Array(0);
  let rope: RopeCheckReport | undefined;
  const twoLevel = twoLevelOf(bases);
  let withoutIds = 0;
  // The check's exact test needs the model's first layer (its keys depend on the token alone):
  // a later pipeline stage, or a hybrid model's first cache layer deeper in, cannot be checked.
  const first = spec.cacheLayers?.[0] ?? 0;
  return {
    async add(cache, ids) {
      // The RoPE kvtc read must fit the keys (ROPE_MISMATCH, naming the suspect setting, before any
      // fitting); checked on the first sequences with enough repeated tokens.
      if (ids === undefined) withoutIds++;
      else if (first === 0 && !rope?.checked) rope = checkModelRope(cache, ids, spec.rope);
      const n = cache.tokens - o.sink;
      for (const s of bases.flat()) {
        if (!s.acc) continue;
        if (scratch.length < n * s.dim) scratch = new Float32Array(n * s.dim);
        const X = gatherFeatures(cache, { kind: s.kind, layers: s.layers }, spec.rope, o.sink, cache.tokens, scratch);
        await s.acc.add(X, n);
      }
      await twoLevel?.add(cache, o.sink);
    },
    ropeCheck() {
      if (rope) return rope;
      return {
        checked: false,
        reason:
          withoutIds > 0
            ? 'the fit sequences carry no input_ids (the check needs repeated tokens); RoPE rests on the inv_freq check'
            : first !== 0
              ? `the first cache layer is model layer ${first}, and the check needs the model's first layer; RoPE rests on the inv_freq check`
              : 'no fit sequences',
        pairs: 0,
        layers: [],
      };
    },
  };
}

/** Step 3 over a stream of caches (fitAccumulator): returns the RoPE data check's outcome. */
export async function accumulateFit(
  spec: ModelSpec,
  stream: CacheStream,
  bases: BasisState[][],
  o: { sink: number },
): Promise<RopeCheckReport> {
  const acc = fitAccumulator(spec, bases, o);
  await stream((cache, ids) => acc.add(cache, ids));
  return acc.ropeCheck();
}

/**
 * Step 3: the fit pass. Adds each fit cache to the covariance of every basis of every candidate
 * grouping; checks kvtc's reading of the model's RoPE against the first caches (ROPE_MISMATCH).
 */
export async function captureFit(
  runner: ModelRunner,
  spec: ModelSpec,
  seqs: number[][],
  bases: BasisState[][],
  o: { sink: number; chunk: number; signal?: AbortSignal; progress: ProgressFn; timer: StageTimer },
): Promise<RopeCheckReport> {
  return accumulateFit(spec, (visit) => streamFit(runner, seqs, o, visit), bases, o);
}

/** Step 4: caches of held-out sequences, kept (tuning: error tables and sizing; report: the figures). */
export async function captureCaches(
  runner: ModelRunner,
  seqs: number[][],
  label: string,
  o: { chunk: number; signal?: AbortSignal; progress: ProgressFn; park?: ParkedCaches },
): Promise<KvCache[]> {
  const total = seqs.reduce((a, s) => a + s.length, 0);
  const caches: KvCache[] = [];
  let done = 0;
  for (const ids of seqs) {
    checkAbort(o.signal);
    const { cache } = await runner.prefill(ids, { chunk: o.chunk });
    // Parked caches go to disk one by one (cache-park.ts) and are not returned.
    if (o.park) await o.park.add(cache);
    else caches.push(cache);
    done += ids.length;
    o.progress({ stage: `capturing ${label} KV`, done, total, unit: 'tokens' });
  }
  return caches;
}

/** Step 5: eigenbases and error tables of one grouping, the tables measured on the tuning caches. */
export async function fitCandidate(
  spec: ModelSpec,
  states: BasisState[],
  held: KvCache[] | CacheSet,
  sink: number,
  ratios: number[],
  onDone?: (done: number, total: number) => void,
  onProgress?: ProgressFn,
  device: Device = 'cpu',
  external?: ExternalEigen,
): Promise<{ tables: AllocationTables[]; seconds: { eigen: number; tables: number }; randomized: number; sketched: number }> {
  const jobs: (FitJob | LazyFitJob)[] = [];
  let twoLevelSeconds = 0;
  const tuning = cacheSet(held);
  const H = tuning.meta.reduce((a, c) => a + c.tokens - sink, 0);
  // Gathered in place: a p_G-wide basis's tuning features are hundreds of MB. Parked caches
  // give only this basis's layers, one cache at a time (cache-park.ts).
  const gather = async (s: BasisState) => {
    const X = new Float32Array(H * s.dim);
    let at = 0;
    for (let i = 0; i < tuning.meta.length; i++) {
      const c = await tuning.get(i, { kind: s.kind, layers: s.layers });
      gatherFeatures(c, { kind: s.kind, layers: s.layers }, spec.rope, sink, c.tokens, X.subarray(at * s.dim));
      at += c.tokens - sink;
    }
    return X;
  };
  const gate = new BlockEigenGate();
  for (const s of states) {
    const maxRank = maxRankForRatios(s.dim, ratios);
    if (s.twoLevel) {
      // The reduction is prepared once (per-layer bases, second pass over the spill), before any
      // basis; each basis then costs an eigensolve of its block of C_Z, built when a worker is
      // free to take it (LazyFitJob): the eigensolve runs on that worker (two bases on two
      // cores), the lift and the tuning coefficients here, and the basis moves to the worker for
      // its tables, not copied (fit-pool.ts).
      const tw = s.twoLevel;
      const t0 = performance.now();
      await tw.prepare(onProgress);
      twoLevelSeconds += (performance.now() - t0) / 1000;
      jobs.push({
        dim: s.dim,
        make: async (run): Promise<FitJob> => {
          const X = await gather(s);
          const t = performance.now();
          // Named when it starts (after the gate): at a large --two-level-rank one solve is minutes,
          // and such a block runs alone (threads 0): its phases, with their operations and an ETA.
          // The gate's slot is held through the lift and the coefficients (BlockEigenGate.held).
          const solve = gate.held((task) => {
            const span = s.layers.length === 1 ? `layer ${s.layers[0]}` : `layers ${s.layers[0]}–${s.layers[s.layers.length - 1]}`;
            const stage = `two-level fit: ${s.kind} eigensolve over ${span} (${task.m} wide, top ${task.k})`;
            onProgress?.({ stage });
            return run(task, task.threads === 0 && onProgress ? eigenWorkProgress(stage, onProgress) : undefined);
          });
          let b: TwoLevelBasis;
          try {
            b = await tw.basis(s.kind, s.layers, maxRank, X, H, solve.run);
          } finally {
            solve.release();
          }
          twoLevelSeconds += (performance.now() - t) / 1000;
          return {
            kind: s.kind,
            layers: s.layers,
            dim: s.dim,
            mean: b.mean,
            eigen: { values: b.values, vectors: b.vectors },
            coefficients: { coeffs: b.coeffs, residual: b.residual },
            // The coefficients are computed: the features are not needed again.
            heldout: new Float32Array(0),
            heldoutTokens: H,
          };
        },
      });
      continue;
    }
    // Built when a worker takes it (fit-pool.ts LazyFitJob): one covariance copy and one basis's
    // tuning features per job in flight, not every basis's at once.
    const acc = s.acc;
    jobs.push({
      dim: s.dim,
      make: async () => {
        const cov = acc.finish();
        return {
          kind: s.kind,
          layers: s.layers,
          dim: s.dim,
          cov: cov.cov,
          mean: cov.mean,
          heldout: await gather(s),
          heldoutTokens: H,
          maxRank,
          device,
          ...(external ? { external } : {}),
        };
      },
    });
  }
  for (const s of states) await s.kernel?.dispose?.();
  const fitted = await fitBases(jobs, { onDone: (d) => onDone?.(d, jobs.length) });
  return {
    tables: fitted.map((f) => f.tables),
    // Summed over bases (CPU seconds); the wall time of the stage is fit_wall.
    seconds: {
      eigen: twoLevelSeconds + fitted.reduce((a, f) => a + f.seconds.eigen, 0),
      tables: fitted.reduce((a, f) => a + f.seconds.tables, 0),
    },
    randomized: fitted.filter((f) => f.solver === 'randomized').length,
    sketched: fitted.filter((f) => f.solver === 'two-level').length,
  };
}

/**
 * Step 6: the plans of one grouping for one target ratio. The DP budget counts raw bits;
 * DEFLATE and headers move the real ratio, so the budget scale is searched until the ratio
 * measured on the tuning caches lands on the target. Sizing needs no model graphs: the tuning
 * coefficients on the full basis are in the tables, quantized, packed and deflated as encode does.
 */
export function allocateForRatio(
  tables: AllocationTables[],
  dims: number[],
  ratio: number,
  tuning: readonly { tokens: number }[],
  spec: ModelSpec,
  sink: number,
  window: number,
  entropy: EntropyCoder,
  onStep?: (step: number, best: BudgetScale) => void,
): { plans: BasisPlan[]; scale: BudgetScale } {
  // One DP per basis serves the whole search (fit.ts BasisAllocator); the sizing reads layouts, not plans (no basis copies).
  const allocators = tables.map((t) => new BasisAllocator(t));
  const budget = (i: number, scale: number) => Math.max(0, Math.floor(((16 * dims[i]) / ratio) * scale));
  const layoutsFor = (scale: number) => allocators.map((a, i) => a.layout(budget(i, scale)));
  const best = searchBudgetScale((scale) => blobSizeRatio(layoutsFor(scale), tables, tuning, spec, sink, window, entropy), ratio, onStep);
  const plans = allocators.map((a, i) => a.plan(budget(i, best.scale)));
  for (const a of allocators) a.release();
  return { plans, scale: best };
}

const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;

/** The figure 'auto' minimizes: the mean of the key and value errors (each the mean over layers). */
export function groupingScore(m: Pick<Measurement, 'relKey' | 'relValue'>): number {
  return (mean(m.relKey) + mean(m.relValue)) / 2;
}

/**
 * How much lower (relative) a grouping's tuning score must be to be kept over one whose bases
 * store fewer floats. Measured on SmolLM2-135M (docs/real-models.md): at 16x one basis over all
 * 30 layers scored 0.6% below 16 layers per basis — less than the report interval's half-width
 * (about 3% relative on keys) — with twice the stored basis (104 MB vs about 54 MB, past
 * GitHub's 100 MB file limit). A gain the tuning split cannot resolve is not worth the size.
 */
export const AUTO_GROUPING_MIN_GAIN = 0.02;

/** Floats a grouping's plans store in their bases (p × kept rank, summed): what its profile's size grows with. */
export function storedBasisFloats(plans: Pick<BasisPlan, 'dim' | 'rank'>[]): number {
  return plans.reduce((a, p) => a + p.dim * p.rank, 0);
}

/**
 * Whether `auto` keeps candidate `c` over the best so far: a lower score with no larger bases, or
 * a score lower by more than AUTO_GROUPING_MIN_GAIN (relative) if its bases are larger.
 */
export function groupingBeats(c: { score: number; floats: number }, best: { score: number; floats: number }): boolean {
  if (!(c.score < best.score)) return false;
  return c.floats <= best.floats || c.score < best.score * (1 - AUTO_GROUPING_MIN_GAIN);
}

/** Stored static components with a tuned clip range, and with min/max (static-range.ts crossValidatedRange). */
export function clipRangeCounts(plans: BasisPlan[], tables: AllocationTables[]): { tuned: number; min_max: number } {
  let tuned = 0;
  let minMax = 0;
  for (const [i, plan] of plans.entries()) {
    const t = tables[i];
    for (const g of plan.groups) {
      if (g.type === 'none' || g.mode !== 'static') continue;
      const ti = STORED_TYPES.indexOf(g.type);
      for (let j = g.start; j < g.end; j++) {
        if (t.staticTuned[ti * t.dim + j]) tuned++;
        else minMax++;
      }
    }
  }
  return { tuned, min_max: minMax };
}

interface Chosen {
  grouping: FixedGrouping;
  plans: BasisPlan[];
  scale: BudgetScale;
  tuning: Measurement;
  clip: { tuned: number; min_max: number };
  granule: number;
}

/** What the library's calibrate() needs: the model and the data; every other option defaults to src/defaults.ts. */
export type CalibrateInput = Pick<CalibrateOptions, 'modelDir' | 'data'> & Partial<Omit<CalibrateOptions, 'modelDir' | 'data'>>;

/** The options calibrate() runs with: `input`'s, and CALIBRATE_DEFAULTS (CPU, no --force) for what it leaves out or sets undefined. */
export function withCalibrateDefaults(input: CalibrateInput): CalibrateOptions & { report: number } {
  const d = CALIBRATE_DEFAULTS;
  const given = Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined)) as CalibrateInput;
  return {
    ratios: [d.ratio],
    tokens: d.tokens,
    heldout: d.tuningTokens,
    report: d.reportTokens,
    sink: d.sink,
    window: d.window,
    grouping: d.grouping,
    chunk: d.chunk,
    seed: d.seed,
    device: 'cpu',
    force: false,
    ...given,
  };
}

/** What fitAndWrite needs besides the caches: how each ratio's manifest is drafted from the chosen plans. */
export interface FitAndWriteInput {
  opts: CalibrateOptions & { report: number };
  spec: ModelSpec;
  candidates: { fit: FixedGrouping[] };
  states: BasisState[][];
  /** The held-out caches, in memory or parked on disk (cache-park.ts); read one at a time. */
  tuning: KvCache[] | CacheSet;
  report: KvCache[] | CacheSet;
  outDirs: string[];
  entropy: EntropyCoder;
  progress: ProgressFn;
  timer: StageTimer;
  /** The manifest of ratio `ratio`'s profile (everything but what writeProfile adds). */
  draft: (d: {
    ratio: number;
    grouping: FixedGrouping;
    candidates: GroupingCandidate[];
    granule: number;
    m: Measurement;
    tuning: Measurement;
  }) => ManifestDraft;
}

/**
 * Steps 5-7 of every source of caches (a model run, a KV dump): per candidate grouping, the bases
 * and error tables, per ratio the allocation and its measurement on the tuning caches, the
 * grouping with the smallest tuning error (groupingBeats), then the report-split figures and the profile written.
 */
export async function fitAndWrite(
  x: FitAndWriteInput,
): Promise<{ profiles: RatioResult[]; plans: number; randomized: number; sketched: number }> {
  const { opts, spec, candidates, states, outDirs, entropy, progress, timer } = x;
  const tuning = cacheSet(x.tuning);
  const report = cacheSet(x.report);
  const { lap } = timer;
  const settings = { sink: opts.sink, window: opts.window, entropy, device: opts.device };
  // Per ratio, the best candidate so far (by tuning-split error) and every candidate's figures.
  const chosen: (Chosen | undefined)[] = opts.ratios.map(() => undefined);
  const tried: GroupingCandidate[][] = opts.ratios.map(() => []);
  let randomized = 0;
  let sketched = 0;
  for (const [gi, grouping] of candidates.fit.entries()) {
    checkAbort(opts.signal);
    const label = candidates.fit.length > 1 ? ` (grouping ${grouping})` : '';
    const stage = `fitting bases${label} (eigen + error tables)`;
    progress({ stage, done: 0, total: states[gi].length, unit: 'bases' });
    let fitted: Awaited<ReturnType<typeof fitCandidate>> | undefined = await fitCandidate(
      spec,
      states[gi],
      tuning,
      opts.sink,
      opts.ratios,
      (d, n) => progress({ stage, done: d, total: n, unit: 'bases' }),
      progress,
      opts.device,
      opts.external,
    );
    // The two-level fit starts from these per-layer bases rather than solving them again.
    const two = twoLevelOf(states);
    if (two && grouping === 'layer') for (const t of fitted.tables) two.offerLayer(t.kind, t.layers[0], t.values, t.vectors);
    timer.add('eigen', fitted.seconds.eigen);
    timer.add('error_tables', fitted.seconds.tables);
    randomized += fitted.randomized;
    sketched += fitted.sketched;
    timer.lap('fit_wall');
    // A grouping's covariances are spent once its bases are fitted, unless the two-level fit has yet to read them (its per-layer bases).
    if (!two || two.prepared) for (const s of states[gi]) s.acc?.release();
    const dims = states[gi].map((s) => s.dim);
    // Every ratio's plans first, then the tables go (an all-layer 8B basis and its coefficients
    // are 1 GiB) before the codec's sessions for the measurements take their copies of the plans.
    const allocated = opts.ratios.map((ratio) => {
      checkAbort(opts.signal);
      const { plans, scale } = allocateForRatio(fitted!.tables, dims, ratio, tuning.meta, spec, opts.sink, opts.window, entropy, (it, b) =>
        progress({
          stage: `allocating bits for ${ratio}x${label}`,
          done: it,
          total: BUDGET_SCALE_STEPS,
          unit: 'steps',
          detail: `measured ${b.ratio.toFixed(2)}x at budget scale ${b.scale.toFixed(3)}`,
        }),
      );
      lap('allocation');
      return { plans, scale, clip: clipRangeCounts(plans, fitted!.tables) };
    });
    const granule = fitted.tables[0].granule;
    fitted = undefined;
    for (const [ri, { plans, scale, clip }] of allocated.entries()) {
      checkAbort(opts.signal);
      const m = await measurePlans(spec, plans, tuning, settings, true);
      lap('measure');
      tried[ri].push({
        grouping: String(grouping),
        ratio_compressed: m.ratioCompressed,
        rel_error: { key: mean(m.relKey), value: mean(m.relValue) },
      });
      const best = chosen[ri];
      const here = { score: groupingScore(m), floats: storedBasisFloats(plans) };
      if (!best || groupingBeats(here, { score: groupingScore(best.tuning), floats: storedBasisFloats(best.plans) })) {
        chosen[ri] = {
          grouping,
          plans,
          scale,
          tuning: m,
          clip,
          granule,
        };
      }
    }
  }

  // The tuning caches (when held) and the two-level reduction are done with (for 8B geometry,
  // 1 GiB and 0.3–1 GiB): let them go before the report measurements.
  tuning.drop();
  twoLevelOf(states)?.release();
  const profiles: RatioResult[] = [];
  for (const [ri, ratio] of opts.ratios.entries()) {
    checkAbort(opts.signal);
    const c = chosen[ri]!;
    progress({ stage: `measuring ${ratio}x on report text` });
    const m = await measurePlans(spec, c.plans, report, settings, true);
    lap('measure');
    const draft = x.draft({
      ratio,
      grouping: c.grouping,
      candidates: opts.grouping === 'auto' ? tried[ri] : [],
      granule: c.granule,
      m,
      tuning: c.tuning,
    });
    checkAbort(opts.signal);
    progress({ stage: 'writing profile' });
    const manifest = await writeProfile(outDirs[ri], draft, c.plans, { force: opts.force });
    lap('write');
    profiles.push({
      profile: outDirs[ri],
      profile_id: manifest.profile_id,
      unchanged: manifest.unchanged === true,
      ...(manifest.equivalent ? { equivalent: manifest.equivalent } : {}),
      replaced: manifest.replaced === true,
      ...(manifest.difference ? { difference: manifest.difference } : {}),
      ratio_target: ratio,
      grouping: String(c.grouping),
      ratio_compressed: m.ratioCompressed,
      ratio_blob: m.ratioBlob,
      context_tokens: m.contextTokens,
      rel_error: {
        key: mean(m.relKey),
        value: mean(m.relValue),
        ...(m.relKeyCi95 ? { key_ci95: m.relKeyCi95 } : {}),
        ...(m.relValueCi95 ? { value_ci95: m.relValueCi95 } : {}),
        key_per_layer: m.relKey,
        value_per_layer: m.relValue,
      },
      tuning_rel_error: { key: mean(c.tuning.relKey), value: mean(c.tuning.relValue) },
      bits_per_token: manifest.plans.reduce((a, p) => a + p.bits_per_token, 0),
      budget_scale: c.scale.scale,
      clip_ranges: c.clip,
      grouping_candidates: opts.grouping === 'auto' ? tried[ri] : [],
    });
  }
  return { profiles, plans: chosen[0]!.plans.length, randomized, sketched };
}

export async function calibrate(options: CalibrateInput): Promise<CalibrateResult> {
  const opts = withCalibrateDefaults(options);
  const progress = opts.onProgress ?? noProgress;
  const entropy = opts.entropy ?? 'deflate-rle';
  const timer = stageTimer();
  const { seconds, lap } = timer;
  checkRatios(opts.ratios);

  progress({ stage: 'loading model' });
  const { model, outDirs } = await openModel(opts);
  const spec = model.spec;
  opts.external ??= eigensolverFor(spec, opts);
  lap('load');

  const stateSets: BasisState[][][] = [];
  const parked: ParkedCaches[] = [];
  let released = false;
  const release = async () => {
    if (!released) await model.session.release();
    released = true;
  };
  try {
    const weights = modelBytes(model.files);
    const candidates = groupingCandidates(spec, opts.grouping, opts.covarianceBudget, opts.memory, {
      ratios: opts.ratios,
      fixedCovarianceLimit: opts.covarianceBudget,
      rank: opts.twoLevelRank,
      estimate: (c) => memoryEstimate(spec, c, opts, weights).peak,
    });
    const memory = planMemory(spec, candidates, opts, weights);
    // The two-level fit's disk: fit features in float16, the tuning and report caches in float32 (checked before any work).
    if (candidates.sketched?.length)
      await checkSpillSpace(spillBytes(spec, opts.tokens) + 2 * spillBytes(spec, opts.heldout) + 2 * spillBytes(spec, opts.report));
    progress({ stage: 'reading calibration text' });
    const { data, split, seqLen } = await readSplit(opts, spec, model.tokenizer, candidates, progress);
    lap('tokenize');
    const fitVectors = split.fit.reduce((a, q) => a + Math.max(0, q.length - opts.sink), 0);
    const under = underdeterminedBasis(spec, candidates, fitVectors, opts.twoLevelRank);
    const warnings = [...unusedRankWarning(opts.twoLevelRank, candidates), ...(under ? [underdeterminedWarning(under, '--tokens')] : [])];

    const runner = new ModelRunner(model);
    // Longrope graphs choose their factors per forward pass: such caches are captured in one (freqs.ts).
    const chunk = ropeSafeChunk(spec.rope, opts.chunk);
    const states = await candidateStates(spec, candidates, opts.device, { rank: opts.twoLevelRank, external: opts.external });
    stateSets.push(states);
    const ropeCheck = await captureFit(runner, spec, split.fit, states, { sink: opts.sink, chunk, signal: opts.signal, progress, timer });
    timer.restart();
    // With the two-level fit (large models) the tuning and report caches wait on disk, read back
    // one at a time (cache-park.ts): 1 and 2 GiB for Llama 3.1 8B geometry at the defaults.
    const parkIf = async () => {
      if (!candidates.sketched?.length) return undefined;
      const p = await ParkedCaches.create();
      parked.push(p);
      return p;
    };
    const tuningPark = await parkIf();
    const tuningHeld = await captureCaches(runner, split.heldout, 'tuning', { chunk, signal: opts.signal, progress, park: tuningPark });
    const tuning = tuningPark ?? tuningHeld;
    const reportPark = await parkIf();
    const reportHeld = await captureCaches(runner, split.report, 'report', { chunk, signal: opts.signal, progress, park: reportPark });
    const report = reportPark ?? reportHeld;
    await release();
    lap('forward');

    const sourcesMeta = data.sources.map((t) => ({ name: t.name, sha256: t.sha256, bytes: t.bytes }));
    const written = await fitAndWrite({
      opts,
      spec,
      candidates,
      states,
      tuning,
      report,
      outDirs,
      entropy,
      progress,
      timer,
      draft: (d) =>
        manifestDraft({
          model,
          ratio: d.ratio,
          opts: { ...opts, grouping: d.grouping },
          groupingRequested: String(opts.grouping),
          candidates: d.candidates,
          sketched: candidates.sketched,
          granule: d.granule,
          entropy,
          sources: sourcesMeta,
          split: { fit: split.fit.length, heldout: split.heldout.length, report: split.report.length, seqLen },
          m: d.m,
          tuning: d.tuning,
        }),
    });
    seconds.total = timer.total();
    return {
      model: model.name,
      model_dir: model.dir,
      tokens: split.fit.length * seqLen,
      tokens_requested: opts.tokens,
      heldout_tokens: split.heldout.length * seqLen,
      report_tokens: split.report.length * seqLen,
      sequences: split.fit.length + split.heldout.length + split.report.length,
      seq_len: seqLen,
      plans: written.plans,
      groupings: candidates.fit.map(String),
      groupings_skipped: candidates.skipped,
      groupings_sketched: candidates.sketched ?? [],
      randomized_bases: written.randomized,
      sketched_bases: written.sketched,
      ...(twoLevelOf(states) ? { two_level: twoLevelOf(states)!.summary() } : {}),
      memory_estimate: memory,
      rope_check: { checked: ropeCheck.checked, pairs: ropeCheck.pairs, ...(ropeCheck.reason ? { reason: ropeCheck.reason } : {}) },
      profiles: written.profiles,
      seconds,
      skipped_data: data.skipped,
      eigensolver: eigensolverUsed(spec, opts.external),
      warnings,
    };
  } finally {
    await release();
    // The two-level fit's spill is deleted after its second pass; here too on an error or Ctrl-C.
    for (const st of stateSets) await twoLevelOf(st)?.dispose();
    for (const p of parked) await p.dispose();
  }
}

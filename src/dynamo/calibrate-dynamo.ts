// Tested by test/dynamo/calibrate-export.test.ts.
/**
 * `kvtc calibrate --target dynamo`: a profile the NVIDIA Dynamo KVTC kernels can run.
 *
 * The steps are calibrate's (src/calibrate/calibrate.ts: openModel, readSequences, streamFit,
 * captureCaches, checkAbort); what this target adds is its rows, tables, costs and measurement:
 * capture (the same text selection, sequences and prefill as src/calibrate) → rows = blocks of
 * `blockTokens` tokens of one layer's K (as stored, RoPE applied) or V, in the block layout →
 * streaming float64 covariance per (layer, kind) → its top k eigenpairs (k = what the smallest
 * ratio's budget can store; beyond the fit's rank, its null space completed: fit.ts
 * dynamoFitComponents, dynamoEigen) → float32 mean and projection →
 * held-out coefficients through the kernels' arithmetic → error tables with the kernels'
 * quantizers → DP per target ratio → measured on the held-out caches through the emulated
 * kernels end to end → kvtc-dynamo.json + kvtc-dynamo.safetensors.
 *
 * Ratios are against fp16/bf16 blocks (2 bytes per element), as everywhere in kvtc.
 */
import { captureCaches, checkAbort, checkRatios, openModel, readSequences, streamFit, type ProfileOutput } from '../calibrate/calibrate.js';
import type { CalibrationTokens, SequenceSplit, SkippedFile } from '../calibrate/sequences.js';
import { stageTimer } from '../calibrate/stage-times.js';
import { ropeSafeChunk } from '../rope/freqs.js';
import { CovarianceAccumulator, createGramKernel, type GramKernel } from '../fit/covariance.js';
import type { KvKind } from '../codec/types.js';
import { CALIBRATE_DEFAULTS } from '../defaults.js';
import { KvtcError, UsageError } from '../errors.js';
import type { LoadedModel } from '../model/load.js';
import { ModelRunner } from '../model/runner.js';
import type { Device } from '../onnx/session.js';
import { noProgress, type ProgressFn } from '../progress.js';
import { PRODUCER, VERSION } from '../version.js';
import { blockFeatures, fullBlocks, gatherBlockRows, type BlockLayout, type BlockShape } from './blocks.js';
import { basisConfig, measureDynamo, type DynamoMeasurement, type DynamoSetup } from './dynamo-codec.js';
import {
  DEFAULT_INT_BITS,
  dynamoEigen,
  dynamoFitComponents,
  dynamoMaxComponents,
  planDynamoBasis,
  prepareDynamoBasis,
  type DynamoBasis,
  type DynamoBasisTables,
  type DynamoEigen,
} from './fit.js';
import type { Fp8Path } from './kernels.js';
import { isDynamoProfileDir, readDynamoManifest, writeDynamoProfile } from './profile.js';
import { DYNAMO_PROFILE_FORMAT, DYNAMO_PROFILE_VERSION, LIMITS, type DynamoManifestDraft } from './schema.js';

/** tokens_per_block when none is given: vLLM's default block size, the first of kvbench.rs's 16/32/64. */
export const DEFAULT_BLOCK_TOKENS = CALIBRATE_DEFAULTS.blockTokens;

export interface CalibrateDynamoOptions {
  modelDir: string;
  data: string[];
  ratios: number[];
  /** The ratios were asked for explicitly (--ratio): the default name then carries them. */
  ratiosGiven?: boolean;
  /** Calibration tokens (fit), held-out tokens (allocation and reported error). */
  tokens: number;
  heldout: number;
  blockTokens: number;
  layout?: BlockLayout;
  fp8Path?: Fp8Path;
  intBits?: number[];
  /**
   * Fit all `features` components with the dense solver (the fit before truncation), instead of
   * the k the budget can store. For comparisons: where the fit has full rank the plans are the
   * same up to the solvers' rounding; where not, the two differ in their null-space vectors.
   */
  fullBasis?: boolean;
  chunk: number;
  seed: number;
  device: Device;
  /** Output directory; with several ratios `-r<ratio>` is appended. Default kvtc-profiles/<model>-dynamo. */
  out?: string;
  force: boolean;
  /** A file in a --data directory that is not UTF-8 text is an error instead of skipped (--strict-data). */
  strictData?: boolean;
  onProgress?: ProgressFn;
  signal?: AbortSignal;
}

export interface DynamoRatioResult {
  profile: string;
  profile_id: string;
  unchanged: boolean;
  replaced: boolean;
  ratio_target: number;
  /** fp16 bytes of the held-out blocks / their codes + per-row min/max. */
  ratio_rows: number;
  /** The same with the range headers of one call per basis per held-out sequence. */
  ratio_calls: number;
  blocks_per_call: number;
  /** Σ over bases of one block's bytes (every layer, K and V). */
  bytes_per_block: number;
  rel_error: { key: number; value: number; key_per_layer: number[]; value_per_layer: number[] };
  /** Ranges per basis (kernel launches per call ≈ 1 + 2 per IntX range). */
  ranges: number[];
}

export interface CalibrateDynamoResult {
  model: string;
  model_dir: string;
  block_tokens: number;
  layout: BlockLayout;
  features: number;
  fp8_path: Fp8Path;
  tokens: number;
  tokens_requested: number;
  heldout_tokens: number;
  blocks_fit: number;
  blocks_heldout: number;
  seq_len: number;
  bases: number;
  /** Components fitted, projected and tabled per basis (≤ features; fit.ts dynamoFitComponents). */
  components_fitted: number;
  /** Of those, the top ones eigen-solved (≤ blocks_fit); the rest complete the null space. */
  components_solved: number;
  /** How they were fitted (fit-pool.ts's solver names). */
  eigen_solver: DynamoEigen['solver'];
  profiles: DynamoRatioResult[];
  warnings: string[];
  seconds: Record<string, number>;
  /** Files in --data directories skipped because they are not UTF-8 text. */
  skipped_data: SkippedFile[];
}

function usage(message: string, fix: string, context: Record<string, unknown> = {}): KvtcError {
  return new UsageError(message, fix, context);
}

/** The profile this target writes, for openModel's checks of --out. */
export const DYNAMO_OUTPUT: ProfileOutput = {
  label: 'dynamo profile',
  suffix: '-dynamo',
  holds: isDynamoProfileDir,
  fingerprint: async (dir) => (await readDynamoManifest(dir)).manifest.model.fingerprint,
  fix: 'Pass --force to replace it, or choose another --out.',
};

const round6 = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(6)) : x);
const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;

/** Everything the held-out measurement needs, as the kernels' configs. */
function setupOf(shape: BlockShape & { layers: number }, fp8Path: Fp8Path, bases: DynamoBasis[]): DynamoSetup {
  return { shape, fp8Path, bases: bases.map((b) => ({ layer: b.layer, kind: b.kind, config: basisConfig(b) })) };
}

/**
 * The calibration text and its fit / held-out sequences, read and split by calibrate's
 * readSequences with no report split; sequences are `seqLen` tokens, a multiple of the block size.
 */
export async function selectSequences(
  tokenizer: LoadedModel['tokenizer'],
  data: string[],
  o: { seqLen: number; tokens: number; heldout: number; seed: number; blockTokens: number; strictData?: boolean; signal?: AbortSignal },
  progress: ProgressFn = noProgress,
): Promise<{ split: SequenceSplit; data: CalibrationTokens }> {
  const { split, data: read } = await readSequences(
    { data, tokens: o.tokens, heldout: o.heldout, report: 0, seed: o.seed, strictData: o.strictData, signal: o.signal },
    tokenizer,
    { seqLen: o.seqLen, minFitTokens: Math.max(256, 64 * o.blockTokens) },
    progress,
  );
  return { split, data: read };
}

/** Sequence length for blocks of B tokens: the model's context (≤ 512), cut to whole blocks. */
export function sequenceLength(maxPositions: number, blockTokens: number): number {
  return Math.floor(Math.min(maxPositions, 512) / blockTokens) * blockTokens;
}

export async function calibrateDynamo(opts: CalibrateDynamoOptions): Promise<CalibrateDynamoResult> {
  const progress = opts.onProgress ?? noProgress;
  const layout = opts.layout ?? 'NHD';
  const fp8Path = opts.fp8Path ?? CALIBRATE_DEFAULTS.fp8Cast;
  const intBits = opts.intBits ?? [...DEFAULT_INT_BITS];
  const B = opts.blockTokens;
  const timer = stageTimer();
  const { seconds, lap } = timer;
  checkRatios(opts.ratios);
  if (!(Number.isInteger(B) && B >= 1 && B <= LIMITS.blockTokens))
    throw usage(
      `--block-tokens ${B} is out of range`,
      `Give Dynamo's tokens_per_block, a whole number between 1 and ${LIMITS.blockTokens} (default ${DEFAULT_BLOCK_TOKENS}).`,
    );

  progress({ stage: 'loading model' });
  // The block size is checked against the model before the outputs are (openModel's hook).
  const { model, outDirs } = await openModel(opts, DYNAMO_OUTPUT, (m) => {
    const p = blockFeatures({ kvHeads: m.spec.kvHeads, headDim: m.spec.headDim, blockTokens: B });
    if (p > LIMITS.features) {
      throw usage(
        `a block of ${B} tokens of this model has ${p} features (${m.spec.kvHeads} KV heads × ${m.spec.headDim} × ${B}), more than the ${LIMITS.features} kvtc fits per basis`,
        'Use a smaller --block-tokens.',
        { features: p },
      );
    }
    if (sequenceLength(m.spec.maxPositions, B) < B)
      throw usage(
        `--block-tokens ${B} is longer than the model's context (${m.spec.maxPositions} tokens)`,
        `Use --block-tokens ≤ ${Math.min(m.spec.maxPositions, 512)}.`,
      );
  });
  const spec = model.spec;
  const shape = { layers: spec.layers, kvHeads: spec.kvHeads, headDim: spec.headDim, blockTokens: B, layout };
  const p = blockFeatures(shape);
  const seqLen = sequenceLength(spec.maxPositions, B);
  const states: { kind: KvKind; layer: number; acc: CovarianceAccumulator; kernel: GramKernel; disposed?: boolean }[] = [];
  try {
    lap('load');

    progress({ stage: 'reading calibration text' });
    const { split, data } = await selectSequences(
      model.tokenizer,
      opts.data,
      {
        seqLen,
        tokens: opts.tokens,
        heldout: opts.heldout,
        seed: opts.seed,
        blockTokens: B,
        strictData: opts.strictData,
        signal: opts.signal,
      },
      progress,
    );
    lap('tokenize');

    const runner = new ModelRunner(model);
    const chunk = ropeSafeChunk(spec.rope, opts.chunk);
    const kinds: KvKind[] = ['key', 'value'];
    for (let l = 0; l < spec.layers; l++) {
      for (const kind of kinds) {
        const kernel = await createGramKernel(p, { device: opts.device });
        states.push({ kind, layer: l, kernel, acc: new CovarianceAccumulator(p, kernel) });
      }
    }
    const blocksPerSeq = seqLen / B;
    let scratch = new Float32Array(0);
    // Rows are whole blocks of the cache as stored (RoPE kept, no sink): the kernels' rows.
    await streamFit(runner, split.fit, { chunk, signal: opts.signal, progress, timer }, async (cache) => {
      const { first, count } = fullBlocks(cache, B);
      if (scratch.length < count * p) scratch = new Float32Array(count * p);
      for (const s of states) {
        const X = gatherBlockRows(cache, s.kind, s.layer, shape, first, count, scratch);
        await s.acc.add(X, count);
      }
    });
    timer.restart();
    const held = await captureCaches(runner, split.heldout, 'held-out', { chunk, signal: opts.signal, progress });
    lap('forward');

    const blocksFit = split.fit.length * blocksPerSeq;
    const blocksHeld = held.reduce((a, c) => a + fullBlocks(c, B).count, 0);
    const warnings: string[] = [];
    // Components the smallest ratio's budget could store; the fit has data for fewer than blocksFit.
    const kBudget = dynamoMaxComponents(p, opts.ratios, intBits);
    if (blocksFit < kBudget) {
      warnings.push(
        `${blocksFit} calibration blocks for ${p} features per block: the covariance has rank < ${blocksFit}, so of the ${kBudget} components the ${Math.min(...opts.ratios)}x budget could store, those beyond it are fitted on nothing (feature axes of largest variance complete them); give more --tokens (≥ ${kBudget * B}) to fit them all.`,
      );
    }
    const fit = opts.fullBasis ? { components: p, solved: p } : dynamoFitComponents(p, blocksFit, opts.ratios, intBits);
    const kFit = fit.components;
    let solver: DynamoEigen['solver'] = 'dense';
    const tables: DynamoBasisTables[] = [];
    let eigenSeconds = 0;
    let tableSeconds = 0;
    for (const [i, s] of states.entries()) {
      checkAbort(opts.signal);
      progress({ stage: 'fitting bases (eigen + held-out error tables)', done: i, total: states.length, unit: 'bases' });
      const cov = s.acc.finish();
      s.disposed = true;
      await s.kernel.dispose?.();
      let t = performance.now();
      const eigen = await dynamoEigen(cov.cov, p, kFit, { solved: fit.solved });
      solver = eigen.solver;
      eigenSeconds += (performance.now() - t) / 1000;
      t = performance.now();
      const rows = new Float32Array(blocksHeld * p);
      let at = 0;
      for (const c of held) {
        const { first, count } = fullBlocks(c, B);
        gatherBlockRows(c, s.kind, s.layer, shape, first, count, rows.subarray(at * p, (at + count) * p));
        at += count;
      }
      tables.push(
        prepareDynamoBasis({
          kind: s.kind,
          layer: s.layer,
          features: p,
          mean: cov.mean,
          eigen,
          heldout: rows,
          heldoutRows: blocksHeld,
          fp8Path,
          intBits,
        }),
      );
      tableSeconds += (performance.now() - t) / 1000;
    }
    seconds.eigen = eigenSeconds;
    seconds.error_tables = tableSeconds;
    timer.restart();

    const sources = data.sources.map((t) => ({ name: t.name, sha256: t.sha256, bytes: t.bytes }));
    const profiles: DynamoRatioResult[] = [];
    for (const [ri, ratio] of opts.ratios.entries()) {
      checkAbort(opts.signal);
      progress({ stage: `allocating bytes for ${ratio}x` });
      const budget = Math.floor((2 * p) / ratio);
      const bases = tables.map((t) => planDynamoBasis(t, budget));
      lap('allocation');
      progress({ stage: `measuring ${ratio}x on held-out text through the emulated kernels` });
      const m: DynamoMeasurement = measureDynamo(setupOf(shape, fp8Path, bases), held);
      lap('measure');
      const draft: DynamoManifestDraft = {
        format: DYNAMO_PROFILE_FORMAT,
        format_version: DYNAMO_PROFILE_VERSION,
        producer: { name: PRODUCER, version: VERSION },
        model: {
          name: model.name,
          architecture: spec.architecture,
          fingerprint: model.fingerprint.id,
          layers: spec.layers,
          kv_heads: spec.kvHeads,
          head_dim: spec.headDim,
          kv_dtype: spec.kvDtype,
        },
        block: { tokens_per_block: B, layout, features: p, fp8_path: fp8Path },
        settings: {
          ratio_target: ratio,
          tokens: opts.tokens,
          heldout: opts.heldout,
          chunk: opts.chunk,
          seed: opts.seed,
          granule: tables[0].tables.granule,
          int_bits: intBits as (1 | 2 | 4 | 8)[],
        },
        calibration: {
          sources,
          blocks_fit: blocksFit,
          blocks_heldout: blocksHeld,
          sequences: split.fit.length + split.heldout.length,
          seq_len: seqLen,
        },
        measured: {
          blocks_per_call: Math.round(m.blocksPerCall),
          bytes_per_block: bases.reduce((a, b) => a + b.bytes_per_block, 0),
          ratio_rows: round6(m.ratioRows),
          ratio_calls: round6(m.ratioCalls),
          rel_error: {
            key: m.relKey.map(round6),
            value: m.relValue.map(round6),
            key_mean: round6(mean(m.relKey)),
            value_mean: round6(mean(m.relValue)),
          },
        },
      };
      checkAbort(opts.signal);
      progress({ stage: 'writing dynamo profile' });
      const manifest = await writeDynamoProfile(outDirs[ri], draft, bases, { force: opts.force });
      lap('write');
      profiles.push({
        profile: outDirs[ri],
        profile_id: manifest.profile_id,
        unchanged: manifest.unchanged === true,
        replaced: manifest.replaced === true,
        ratio_target: ratio,
        ratio_rows: m.ratioRows,
        ratio_calls: m.ratioCalls,
        blocks_per_call: m.blocksPerCall,
        bytes_per_block: draft.measured.bytes_per_block,
        rel_error: { key: mean(m.relKey), value: mean(m.relValue), key_per_layer: m.relKey, value_per_layer: m.relValue },
        ranges: bases.map((b) => b.ranges.length),
      });
    }
    seconds.total = timer.total();
    return {
      model: model.name,
      model_dir: model.dir,
      block_tokens: B,
      layout,
      features: p,
      fp8_path: fp8Path,
      tokens: split.fit.length * seqLen,
      tokens_requested: opts.tokens,
      heldout_tokens: split.heldout.length * seqLen,
      blocks_fit: blocksFit,
      blocks_heldout: blocksHeld,
      seq_len: seqLen,
      bases: states.length,
      components_fitted: kFit,
      components_solved: fit.solved,
      eigen_solver: solver,
      profiles,
      warnings,
      seconds,
      skipped_data: data.skipped,
    };
  } finally {
    for (const s of states) if (!s.disposed) await s.kernel.dispose?.();
    await model.session.release();
  }
}

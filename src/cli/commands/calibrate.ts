import { z } from 'zod';
import { calibrate, MAX_RATIO, MIN_RATIO, type CalibrateResult } from '../../calibrate/calibrate.js';
import { calibrateKv, type KvCalibrateResult } from '../../calibrate/calibrate-kv.js';
import { parseShards } from '../../calibrate/kv-shards.js';
import { modelDirFromOption } from '../../model/load.js';
import { CALIBRATE_DEFAULTS } from '../../defaults.js';
import { DEFAULT_CALIBRATION_DIR } from '../../paths.js';
import { parseOptions } from '../../validation.js';
import { fmtSeconds, table } from '../format.js';
import type { CliIO } from '../io.js';
import { UsageError } from '../../errors.js';
import type { ProgressFn } from '../../progress.js';
import type { SkippedFile } from '../../calibrate/sequences.js';
import { onInterrupt } from '../interrupt.js';
import { createProgress } from '../progress.js';
import { printJson } from '../json.js';
import { wholeNumber, decimal, deviceSchema } from '../options.js';
import { EIGENSOLVERS, EXTERNAL_EIGEN_MIN_P } from '../../fit/eigen-python.js';

/** The options of both calibration targets (calibrate-dynamo.ts extends it too). */
export const SharedOptions = z.object({
  model: z.string(),
  onnx: z.string().min(1).optional(),
  data: z.array(z.string()).optional(),
  tokens: wholeNumber(256),
  tuningTokens: wholeNumber(128),
  chunk: wholeNumber(1),
  seed: wholeNumber(0),
  device: deviceSchema,
  out: z.string().optional(),
  force: z.boolean().default(false),
  strictData: z.boolean().default(false),
  json: z.boolean().default(false),
  quiet: z.boolean().default(false),
});

const Options = SharedOptions.extend({
  // program.ts hands --target dynamo to calibrate-dynamo.ts; this command is the kvtc target.
  target: z.enum(['kvtc']).optional(),
  ratio: z
    .array(decimal(MIN_RATIO, MAX_RATIO))
    .min(1, `needs at least one ratio between ${MIN_RATIO} and ${MAX_RATIO}, e.g. --ratio 20 or --ratio 8,16,20`)
    .optional(),
  reportTokens: wholeNumber(128),
  sink: wholeNumber(0),
  window: wholeNumber(0),
  grouping: z.union([z.enum(['auto', 'layer', 'all']), wholeNumber(1)], {
    message: 'must be "auto", "layer", "all" or a whole number of layers ≥ 1',
  }),
  kv: z.string().min(1).optional(),
  shards: z.string().optional(),
  twoLevelRank: wholeNumber(64, 65536).optional(),
  eigensolver: z
    .enum(EIGENSOLVERS as unknown as ['auto', 'builtin', 'numpy', 'torch'], { message: `must be one of: ${EIGENSOLVERS.join(', ')}` })
    .optional(),
  memory: decimal(0.25, 65536).optional(),
});

/** 0.0773 [0.0765, 0.0781] */
function withCi(x: number, ci?: [number, number]): string {
  return ci ? `${x.toFixed(4)} [${ci[0].toFixed(4)}, ${ci[1].toFixed(4)}]` : x.toFixed(4);
}

/** Options only --target dynamo takes (their commander keys; calibrate-dynamo.ts). */
const DYNAMO_ONLY = ['blockTokens', 'fp8Cast'] as const;

const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/**
 * Runs a calibration of either target with the CLI's progress on stderr and its Ctrl-C handling:
 * the first Ctrl-C stops at the next checkpoint, writing nothing (profile writes are atomic
 * either way); a second one quits at once.
 */
export async function withProgressAndInterrupt<T>(
  io: CliIO,
  quiet: boolean,
  run: (onProgress: ProgressFn, signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const progress = createProgress(io, { quiet });
  const interrupt = onInterrupt(io, 'interrupted: stopping before anything is written… (Ctrl-C again to quit at once)');
  try {
    return await run(progress.fn, interrupt.signal);
  } finally {
    interrupt.dispose();
    progress.stop();
  }
}

/** --json has always printed the whole-blob ratio as `ratio` too (scripts read it); the result carries it once, as ratio_blob. */
const withRatioKey = <P extends { ratio_blob: number }>(p: P) => ({ ...p, ratio: p.ratio_blob });

/** The parsed options both targets take, as the core's options. */
export function sharedOptions(opts: z.infer<typeof SharedOptions> & { ratio?: number[] }) {
  return {
    modelDir: modelDirFromOption(opts.model, opts.onnx),
    data: opts.data?.length ? opts.data : [DEFAULT_CALIBRATION_DIR],
    ratios: [...new Set(opts.ratio ?? [CALIBRATE_DEFAULTS.ratio])],
    ratiosGiven: opts.ratio !== undefined,
    tokens: opts.tokens,
    heldout: opts.tuningTokens,
    chunk: opts.chunk,
    seed: opts.seed,
    device: opts.device,
    out: opts.out,
    force: opts.force,
    strictData: opts.strictData,
  };
}

export function warnSkipped(io: CliIO, skipped: readonly SkippedFile[]): void {
  for (const s of skipped) io.err(`warning: skipped ${s.message} (--strict-data makes this an error)\n  fix: ${s.fix}`);
}

/** The stage times line, in pipeline order. */
export function printStageTimes(io: CliIO, s: Record<string, number>): void {
  const order = ['load', 'tokenize', 'forward', 'read', 'covariance', 'eigen', 'error_tables', 'allocation', 'measure', 'write'];
  io.out(
    `time: ${fmtSeconds(s.total)} — ${order
      .filter((k) => s[k] !== undefined)
      .map((k) => `${k} ${fmtSeconds(s[k])}`)
      .join(', ')}`,
  );
}

export default async function calibrateCommand(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  for (const k of DYNAMO_ONLY) {
    if (raw[k] !== undefined)
      throw new UsageError(
        `--${kebab(k)} applies only to --target dynamo`,
        `Add --target dynamo to calibrate for NVIDIA Dynamo's KVTC kernels, or leave out --${kebab(k)}.`,
        { option: `--${kebab(k)}` },
      );
  }
  const opts = parseOptions(Options, raw);
  if (opts.kv !== undefined) return calibrateKvCommand(opts, io);
  const result: CalibrateResult = await withProgressAndInterrupt(io, opts.quiet, (onProgress, signal) =>
    calibrate({
      ...sharedOptions(opts),
      report: opts.reportTokens,
      sink: opts.sink,
      window: opts.window,
      grouping: opts.grouping,
      twoLevelRank: opts.twoLevelRank,
      ...(opts.eigensolver !== undefined ? { eigensolver: opts.eigensolver } : {}),
      ...(opts.memory !== undefined ? { memory: opts.memory * 2 ** 30 } : {}),
      onProgress,
      signal,
    }),
  );
  warnSkipped(io, result.skipped_data);
  printCalibrateResult(io, result, opts.json);
}

/** Prints a calibration's result: one JSON document, or the summary, table and notes. */
function printCalibrateResult(io: CliIO, result: CalibrateResult | KvCalibrateResult, json: boolean): void {
  const kv = 'kv_dir' in result ? result : undefined;
  if (json) {
    const first = result.profiles[0];
    printJson(io, {
      ...withRatioKey(first),
      rel_error: { key: first.rel_error.key, value: first.rel_error.value },
      tokens: result.tokens,
      seconds: result.seconds,
      model: result.model,
      tuning_tokens: result.heldout_tokens,
      report_tokens: result.report_tokens,
      groupings: result.groupings,
      groupings_skipped: result.groupings_skipped,
      ...(result.groupings_sketched.length
        ? {
            groupings_sketched: result.groupings_sketched,
            sketched_bases: result.sketched_bases,
            ...(result.two_level ? { two_level: result.two_level } : {}),
          }
        : {}),
      ...(result.memory_estimate ? { memory_estimate: result.memory_estimate } : {}),
      profiles: result.profiles.map(withRatioKey),
      skipped_data: result.skipped_data,
      eigensolver: result.eigensolver,
      warnings: result.warnings,
      ...(kv ? { kv: kv.kv_dir, rope_check: kv.rope_check, ranks: kv.ranks, shards_index: kv.shards_index } : {}),
    });
    return;
  }
  if (result.tokens < result.tokens_requested) {
    io.err(
      kv
        ? `warning: the dump gave ${result.tokens} fit tokens, fewer than --tokens ${result.tokens_requested}; dump more sequences for a better fit.`
        : `warning: the calibration data gave ${result.tokens} fit tokens, fewer than --tokens ${result.tokens_requested}; add text with --data for a better fit.`,
    );
  }
  for (const w of result.warnings) io.err(`warning: ${w}`);
  io.out(
    `calibrated ${result.model}${kv ? ` from the KV dump ${kv.kv_dir}` : ''}: ${result.tokens} fit tokens (PCA bases), ${result.heldout_tokens} tuning tokens (clip ranges, bit allocation${result.groupings.length > 1 ? ', grouping' : ''}), ${result.report_tokens} report tokens (the figures below), ${kv ? `${result.sequences} sequences (split by --seed)` : `sequences of ${result.seq_len} tokens`}`,
  );
  if (kv && kv.ranks.length > 1)
    io.out(
      `${kv.ranks.length} ranks, one profile each: ${kv.ranks.map((r) => `${r.rank} (layers ${r.layers.join(',')}; KV heads ${r.kv_heads.join(',')})`).join(', ')}`,
    );
  if (result.groupings.length > 1) {
    io.out(
      `grouping auto: fitted ${result.groupings.join(', ')} (layers per basis) and kept the one with the smallest tuning-split error at each ratio (larger bases only when over 2% better)${result.groupings_skipped.length ? `; left out for memory: ${result.groupings_skipped.map((g) => `${g.grouping} (${g.estimated_peak_bytes !== undefined ? `the run's estimated peak with it, ${(g.estimated_peak_bytes / 2 ** 30).toFixed(1)} GiB, passes the --memory budget` : `${(g.covariance_bytes / 2 ** 30).toFixed(1)} GiB of covariance`})`).join(', ')}` : ''}`,
    );
  }
  if (result.memory_estimate) {
    const m = result.memory_estimate;
    const g = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
    io.out(
      `memory: estimated peak ${g(m.peak)} (capture ${g(m.capture)}, fit ${g(m.fit)}, report ${g(m.report)}) within the ${g(m.budget)} budget (--memory; checked before the work started)`,
    );
  }
  if (!result.eigensolver.startsWith('builtin'))
    io.out(
      `eigensolver: ${result.eigensolver}${result.eigensolver.includes(', unused') ? '' : ` for bases of ${EXTERNAL_EIGEN_MIN_P}+ features`} (--eigensolver)`,
    );
  if (!result.rope_check.checked) io.err(`note: the RoPE check against the keys did not run: ${result.rope_check.reason}`);
  if (result.sketched_bases > 0) {
    const tl = result.two_level;
    io.out(
      `${result.sketched_bases} bases (grouping ${result.groupings_sketched.join(', ')}) were fitted two-level: in the span of the largest per-layer principal components${tl ? ` (${tl.kinds.map((k) => `${k.kind}s ${k.reduced_columns} of ${k.features} columns, ${(100 * k.discarded_share).toPrecision(2)}% of the fit variance left out`).join('; ')}; ${(tl.spill_bytes / 2 ** 30).toFixed(2)} GiB of fp16 features spilled to disk and deleted)` : ''}. The error tables count what this loses; docs/benchmarks.md, "Two-level fit"`,
    );
  }
  if (result.randomized_bases > 0) {
    io.out(
      `${result.randomized_bases} large bases were fitted by the truncated randomized eigensolver (the top components any plan at these ratios can store; docs/codec.md)`,
    );
  }
  io.out('');
  io.out(
    table(
      [
        ...(kv && kv.ranks.length > 1 ? ['rank'] : []),
        'target',
        'grouping',
        'ratio (compressed tokens)',
        'ratio (whole blob)',
        'rel err K',
        'rel err V',
        'tuning K / V',
        'bits/token',
        'profile',
      ],
      result.profiles.map((p, i) => [
        ...(kv && kv.ranks.length > 1 ? [kv.ranks[Math.floor(i / (result.profiles.length / kv.ranks.length))].rank ?? ''] : []),
        `${p.ratio_target}x`,
        p.grouping,
        `${p.ratio_compressed.toFixed(2)}x`,
        `${p.ratio_blob.toFixed(2)}x`,
        withCi(p.rel_error.key, p.rel_error.key_ci95),
        withCi(p.rel_error.value, p.rel_error.value_ci95),
        `${p.tuning_rel_error.key.toFixed(4)} / ${p.tuning_rel_error.value.toFixed(4)}`,
        p.bits_per_token,
        p.profile,
      ]),
    ),
  );
  io.out('');
  io.out(
    `Ratios and errors are measured on the report split: ${result.report_tokens} tokens of ${kv ? 'dumped KV' : 'calibration text'} that neither the fit nor the tuning saw`,
  );
  io.out(
    `(blobs of ${result.profiles[0].context_tokens.toFixed(0)}-token contexts, headers and scales included); "tuning" is the same profile on the tuning split the allocation was solved on.`,
  );
  io.out(
    '"whole blob" also counts the sink and window tokens kept uncompressed. rel err = ‖x̂−x‖/‖x‖ over compressed tokens, mean over layers,',
  );
  io.out(
    '[95% interval] from a bootstrap over the report sequences (it measures the sampling of the report text, not a shift to other kinds of text).',
  );
  printStageTimes(io, result.seconds);
  for (const p of result.profiles.filter((x) => x.unchanged)) {
    const e = p.equivalent;
    io.out(
      e
        ? `${p.profile}: kept the existing profile ${p.profile_id}: equivalent within tolerance ${e.tolerance} (same plans; tensors differ by at most ${e.tensors_max_rel_diff.toExponential(1)}, figures by ${e.figures_max_rel_diff.toExponential(1)} relative${e.sign_flips ? `, ${e.sign_flips} basis columns negated` : ''}: another CPU's float rounding), so it was not rewritten.`
        : `${p.profile} already held this exact profile: left as it was (calibration is reproducible on the same machine).`,
    );
  }
  for (const p of result.profiles.filter((x) => x.replaced))
    io.out(
      `${p.profile} held an earlier run of this same calibration (model, data, settings): replaced${p.difference ? ` (${p.difference})` : ''}.`,
    );
  for (const f of kv?.shards_index ?? []) io.out(`wrote ${f}: each rank's profile id, layers and KV heads`);
  io.out(`next: kvtc validate ${result.profiles[0].profile} && kvtc inspect ${result.profiles[0].profile}`);
}

/** calibrate --kv: the same options, the caches from a KV dump (src/calibrate/calibrate-kv.ts). */
async function calibrateKvCommand(opts: z.infer<typeof Options>, io: CliIO): Promise<void> {
  const shards = opts.shards !== undefined ? parseShards(opts.shards) : undefined;
  const result = await withProgressAndInterrupt(io, opts.quiet, (onProgress, signal) =>
    calibrateKv({
      kv: opts.kv!,
      ...(shards ? { shards } : {}),
      ratios: [...new Set(opts.ratio ?? [CALIBRATE_DEFAULTS.ratio])],
      ratiosGiven: opts.ratio !== undefined,
      tokens: opts.tokens,
      heldout: opts.tuningTokens,
      report: opts.reportTokens,
      sink: opts.sink,
      window: opts.window,
      grouping: opts.grouping,
      twoLevelRank: opts.twoLevelRank,
      ...(opts.eigensolver !== undefined ? { eigensolver: opts.eigensolver } : {}),
      ...(opts.memory !== undefined ? { memory: opts.memory * 2 ** 30 } : {}),
      chunk: opts.chunk,
      seed: opts.seed,
      device: opts.device,
      out: opts.out,
      force: opts.force,
      onProgress,
      signal,
    }),
  );
  printCalibrateResult(io, result, opts.json);
}
// Tested by test/calibrate/calibrate.test.ts, test/calibrate/data.test.ts, test/cli/contract.test.ts and test/cli/program.test.ts (option errors).

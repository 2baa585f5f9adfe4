/**
 * `kvtc calibrate --target dynamo [--block-tokens N] [--fp8-cast sm89|sm80]`: a profile for
 * NVIDIA Dynamo's KVTC CUDA kernels (docs/dynamo.md). program.ts routes `--target dynamo` here;
 * calibrate.ts (the kvtc target) refuses the dynamo-only flags.
 */
import { z } from 'zod';
import { MAX_RATIO, MIN_RATIO } from '../../calibrate/calibrate.js';
import { calibrateDynamo, DEFAULT_BLOCK_TOKENS, type CalibrateDynamoResult } from '../../dynamo/calibrate-dynamo.js';
import { FP8_PATHS } from '../../dynamo/kernels.js';
import { LIMITS } from '../../dynamo/schema.js';
import { CALIBRATE_DEFAULTS as CAL } from '../../defaults.js';
import { UsageError } from '../../errors.js';
import { parseOptions } from '../../validation.js';
import { table } from '../format.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';
import { decimal, wholeNumber } from '../options.js';
import { printStageTimes, SharedOptions, sharedOptions, warnSkipped, withProgressAndInterrupt } from './calibrate.js';

/** kvtc-only options and their defaults: any other value is refused with --target dynamo. */
const KVTC_ONLY: Record<string, string> = {
  sink: String(CAL.sink),
  window: String(CAL.window),
  grouping: CAL.grouping,
  reportTokens: String(CAL.reportTokens),
};

const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

const Options = SharedOptions.extend({
  target: z.literal('dynamo'),
  ratio: z
    .array(decimal(MIN_RATIO, MAX_RATIO))
    .min(1, `needs at least one ratio between ${MIN_RATIO} and ${MAX_RATIO}, e.g. --ratio 8 or --ratio 4,8,16`)
    .optional(),
  blockTokens: wholeNumber(1, LIMITS.blockTokens).default(DEFAULT_BLOCK_TOKENS),
  fp8Cast: z.enum(FP8_PATHS as unknown as ['sm89', 'sm80'], { message: `must be one of: ${FP8_PATHS.join(', ')}` }).default(CAL.fp8Cast),
});

export default async function calibrateDynamoCommand(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  for (const k of ['twoLevelRank', 'eigensolver']) {
    if (raw[k] !== undefined) {
      const flag = `--${kebab(k)}`;
      throw new UsageError(
        `${flag} applies only to --target kvtc`,
        `The Dynamo target fits one basis per layer with kvtc's own eigensolver: leave out ${flag}.`,
        {
          option: flag,
        },
      );
    }
  }
  for (const [k, def] of Object.entries(KVTC_ONLY)) {
    if (raw[k] !== undefined && String(raw[k]) !== def) {
      const flag = `--${kebab(k)}`;
      throw new UsageError(
        `${flag} ${JSON.stringify(raw[k])} does not apply to --target dynamo`,
        `The Dynamo kernels compress every full block of one layer (no sink or window tokens, one basis per layer and K/V, measured on held-out blocks): leave out ${flag}.`,
        { option: flag },
      );
    }
  }
  const opts = parseOptions(Options, {
    tokens: String(CAL.tokens),
    tuningTokens: String(CAL.tuningTokens),
    chunk: String(CAL.chunk),
    seed: String(CAL.seed),
    device: 'cpu',
    ...raw,
  });
  const result: CalibrateDynamoResult = await withProgressAndInterrupt(io, opts.quiet, (onProgress, signal) =>
    calibrateDynamo({ ...sharedOptions(opts), blockTokens: opts.blockTokens, fp8Path: opts.fp8Cast, onProgress, signal }),
  );
  warnSkipped(io, result.skipped_data);
  if (opts.json) {
    printJson(io, { target: 'dynamo', ...result });
    return;
  }
  for (const w of result.warnings) io.err(`warning: ${w}`);
  io.out(
    `calibrated ${result.model} for NVIDIA Dynamo's KVTC kernels: blocks of ${result.block_tokens} tokens (${result.layout}, ${result.features} features per row), ${result.bases} bases, FP8 cast ${result.fp8_path}`,
  );
  io.out(
    `fit on ${result.blocks_fit} blocks (${result.tokens} tokens): top ${result.components_fitted} of ${result.features} components per basis (${result.components_solved} solved, ${result.eigen_solver}); measured on ${result.blocks_heldout} held-out blocks (${result.heldout_tokens} tokens)`,
  );
  io.out('');
  io.out(
    table(
      [
        'target',
        'ratio (blocks)',
        `ratio (calls of ${result.profiles[0].blocks_per_call.toFixed(0)} blocks)`,
        'rel err K',
        'rel err V',
        'bytes/block (all layers)',
        'profile',
      ],
      result.profiles.map((p) => [
        `${p.ratio_target}x`,
        `${p.ratio_rows.toFixed(2)}x`,
        `${p.ratio_calls.toFixed(2)}x`,
        p.rel_error.key.toFixed(4),
        p.rel_error.value.toFixed(4),
        p.bytes_per_block,
        p.profile,
      ]),
    ),
  );
  io.out('');
  io.out(
    'Measured through an emulation of the kernels on held-out text: "blocks" counts codes and per-row IntX min/max, "calls" adds the 40-byte range',
  );
  io.out(
    'headers of one kvtc_compress call per layer and K/V per sequence. rel err = ‖x̂−x‖/‖x‖ over the blocks, mean over layers; keys keep RoPE.',
  );
  printStageTimes(io, result.seconds);
  for (const p of result.profiles.filter((x) => x.unchanged)) io.out(`${p.profile} already held this exact profile: left as it was.`);
  for (const p of result.profiles.filter((x) => x.replaced)) io.out(`${p.profile} held an earlier run of this same calibration: replaced.`);
  io.out(`next: kvtc export --format dynamo ${result.profiles[0].profile} --out DIR`);
}
// Tested by test/dynamo/calibrate-export.test.ts.

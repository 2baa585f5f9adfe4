/**
 * `kvtc export --format dynamo PROFILE --out DIR`: the mean/projection tensors and quantization
 * ranges of a dynamo profile, as NVIDIA Dynamo's KVTC kernels load them (docs/dynamo.md).
 */
import { z } from 'zod';
import { exportDynamo } from '../../dynamo/export.js';
import { parseOptions } from '../../validation.js';
import { fmtBytes } from '../format.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';

export const EXPORT_FORMATS = ['dynamo'] as const;

const Options = z.object({
  _: z.array(z.string()).length(1, 'takes one profile directory'),
  format: z.enum(EXPORT_FORMATS, { message: `must be one of: ${EXPORT_FORMATS.join(', ')}` }),
  out: z.string().min(1, 'must name the output directory'),
  force: z.boolean().default(false),
  json: z.boolean().default(false),
});

export default async function exportCommand(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  const r = await exportDynamo(opts._[0], opts.out, { force: opts.force });
  if (opts.json) return void printJson(io, { format: opts.format, ...r });
  io.out(`exported dynamo profile ${r.profile} (id ${r.profile_id}) for NVIDIA Dynamo's KVTC kernels → ${r.out}`);
  io.out(
    `  ${r.configs} KvtcConfigs (one per layer for K and for V), blocks of ${r.tokens_per_block} tokens = ${r.features} features per row, tensors ${fmtBytes(r.tensor_bytes)}`,
  );
  for (const f of r.files) io.out(`  ${f}`);
  io.out(`loading: see ${r.files[2]}`);
}
// Tested by test/dynamo/calibrate-export.test.ts.

import { z } from 'zod';
import { KvtcError } from '../../errors.js';
import { modelDirFromOption } from '../../model/model-files.js';
import { validateProfile } from '../../profile/validate.js';
import { parseOptions } from '../../validation.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';

const Options = z
  .object({
    _: z.array(z.string()).length(1),
    model: z.string().optional(),
    onnx: z.string().min(1).optional(),
    json: z.boolean().default(false),
  })
  .refine((o) => o.onnx === undefined || o.model !== undefined, {
    message: 'needs --model: it names a graph of the model directory',
    path: ['onnx'],
  });

export default async function validate(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  const result = await validateProfile(opts._[0], opts.onnx === undefined ? opts.model : modelDirFromOption(opts.model, opts.onnx));
  // With --json a failed validation is one document: the result, with "error" beside it (main prints it).
  if (opts.json && result.ok) printJson(io, result);
  else if (!opts.json) {
    for (const c of result.checks) io.out(`${c.ok ? '✓' : '✗'} ${c.name}: ${c.detail}`);
    io.out(result.ok ? `${result.profile}: valid` : `${result.profile}: INVALID`);
  }
  if (!result.ok) {
    const failed = result.checks.filter((c) => !c.ok).map((c) => c.name);
    const mismatch = failed.every((n) => n.startsWith('model'));
    throw new KvtcError(mismatch ? 'PROFILE_MISMATCH' : 'PROFILE_INVALID', `profile ${result.profile} failed: ${failed.join(', ')}`, {
      fix: mismatch
        ? 'Use the profile calibrated for this model, or run `kvtc calibrate --model DIR`.'
        : 'Re-create the profile with `kvtc calibrate`.',
      result: result as unknown as Record<string, unknown>,
    });
  }
}
// Tested by test/profile/profile-io.test.ts, test/profile/invalid-profiles.test.ts, test/profile/compat.test.ts and test/cli/contract.test.ts.

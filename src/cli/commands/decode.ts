import { z } from 'zod';
import { decodeFile } from '../../files.js';
import { parseOptions } from '../../validation.js';
import { fmtBytes, fmtSeconds } from '../format.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';
import { deviceSchema } from '../options.js';

const Options = z.object({
  profile: z.string(),
  in: z.string(),
  out: z.string(),
  device: deviceSchema,
  force: z.boolean().default(false),
  json: z.boolean().default(false),
});

export default async function decode(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  const {
    cache,
    stats,
    blobBytes,
    outBytes: bytes,
  } = await decodeFile(opts.in, { profile: opts.profile, out: opts.out, device: opts.device, force: opts.force });
  const result = {
    out: opts.out,
    tokens: stats.tokens,
    blob_bytes: blobBytes,
    out_bytes: bytes,
    seconds: stats.seconds,
    device: opts.device,
  };
  if (opts.json) return void printJson(io, result);
  const s = stats.seconds;
  io.out(`decoded ${stats.tokens} tokens from ${opts.in} (${fmtBytes(blobBytes)}) → ${opts.out} (${fmtBytes(bytes)}, ${cache.dtype})`);
  io.out(
    `  time: ${fmtSeconds(s.total)} (inflate ${fmtSeconds(s.inflate)}, host unpack+dequantize ${fmtSeconds(s.dequantize)}, graphs ${fmtSeconds(s.transform)}, scatter ${fmtSeconds(s.scatter)}) on ${opts.device}`,
  );
}
// Tested by test/codec/encode-decode-cli.test.ts.

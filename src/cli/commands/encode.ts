import { z } from 'zod';
import { encodeFile } from '../../files.js';
import { parseOptions } from '../../validation.js';
import { fmtBytes, fmtSeconds } from '../format.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';
import { deviceSchema } from '../options.js';

const Options = z.object({
  profile: z.string(),
  kv: z.string(),
  out: z.string(),
  device: deviceSchema,
  force: z.boolean().default(false),
  json: z.boolean().default(false),
});

export default async function encode(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  const { profile, stats } = await encodeFile(opts.kv, { profile: opts.profile, out: opts.out, device: opts.device, force: opts.force });
  const result = {
    out: opts.out,
    profile: profile.dir,
    profile_id: profile.manifest.profile_id,
    tokens: stats.tokens,
    compressed_tokens: stats.compressedTokens,
    raw_tokens: stats.tokens - stats.compressedTokens,
    fp16_bytes: stats.fp16Bytes,
    blob_bytes: stats.blobBytes,
    ratio_blob: stats.ratioBlob,
    ratio_compressed: stats.ratioCompressed,
    seconds: stats.seconds,
    device: opts.device,
  };
  if (opts.json) return void printJson(io, result);
  io.out(`encoded ${stats.tokens} tokens → ${opts.out} (${fmtBytes(stats.blobBytes)}, from ${fmtBytes(stats.fp16Bytes)} as fp16)`);
  io.out(
    `  ratio, whole blob:          ${stats.ratioBlob.toFixed(2)}x  (${stats.tokens - stats.compressedTokens} sink/window tokens stored uncompressed)`,
  );
  io.out(
    stats.compressedTokens > 0
      ? `  ratio, compressed tokens:    ${stats.ratioCompressed.toFixed(2)}x  (${stats.compressedTokens} tokens, headers and scales included)`
      : `  ratio, compressed tokens:    n/a — the cache (${stats.tokens} tokens) is not longer than sink + window (${profile.manifest.settings.sink} + ${profile.manifest.settings.window}), nothing was compressed`,
  );
  const s = stats.seconds;
  io.out(
    `  time: ${fmtSeconds(s.total)} (gather ${fmtSeconds(s.gather)}, graphs ${fmtSeconds(s.transform)}, host quantize+pack ${fmtSeconds(s.quantize)}, deflate ${fmtSeconds(s.entropy)}) on ${opts.device}`,
  );
}

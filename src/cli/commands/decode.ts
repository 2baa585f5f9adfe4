import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { KvtcError } from '../../errors.js';
import { writeKvCache } from '../../model/kv-io.js';
import { codecFromProfile, useTransformThread } from '../../profile/codec.js';
import { readBlobHeader } from '../../codec/blob.js';
import { readProfile } from '../../profile/io.js';
import { parseOptions } from '../../validation.js';
import { fmtBytes, fmtSeconds } from '../format.js';
import type { CliIO } from '../io.js';

const Options = z.object({
  profile: z.string(),
  in: z.string(),
  out: z.string(),
  device: z.enum(['cpu', 'cuda']),
  force: z.boolean().default(false),
  json: z.boolean().default(false),
});

export default async function decode(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  if (existsSync(opts.out) && !opts.force) {
    throw new KvtcError('OUTPUT_EXISTS', `output ${opts.out} already exists`, { fix: 'Pass --force to overwrite it, or choose another --out.' });
  }
  if (!existsSync(opts.in)) throw new KvtcError('BLOB_INVALID', `blob ${opts.in} does not exist`, { fix: 'Check the --in path.' });
  const profile = await readProfile(opts.profile);
  const blob = new Uint8Array(await readFile(opts.in));
  const tokens = readBlobHeader(blob, opts.in).tokens;
  const codec = await codecFromProfile(profile, { device: opts.device, transformThread: useTransformThread(profile, tokens) });
  const { cache, stats } = await codec.decode(blob, opts.in);
  await codec.release();
  const bytes = await writeKvCache(opts.out, cache, { model: profile.manifest.model.name, fingerprint: profile.manifest.model.fingerprint.id, extra: { decoded_from: opts.in, profile_id: profile.manifest.profile_id } });
  const result = { out: opts.out, tokens: stats.tokens, blob_bytes: blob.byteLength, out_bytes: bytes, seconds: stats.seconds, device: opts.device };
  if (opts.json) return void io.out(JSON.stringify(result, null, 2));
  const s = stats.seconds;
  io.out(`decoded ${stats.tokens} tokens from ${opts.in} (${fmtBytes(blob.byteLength)}) → ${opts.out} (${fmtBytes(bytes)}, ${cache.dtype})`);
  io.out(`  time: ${fmtSeconds(s.total)} (inflate ${fmtSeconds(s.inflate)}, host unpack+dequantize ${fmtSeconds(s.dequantize)}, graphs ${fmtSeconds(s.transform)}, scatter ${fmtSeconds(s.scatter)}) on ${opts.device}`);
}

// Tested by test/codec/encode-decode-cli.test.ts and test/acceptance/pinned-bytes.test.ts.
/**
 * The file-level jobs behind `kvtc encode` and `kvtc decode`: read a profile and a cache (or a
 * blob), run the codec, write the result atomically. The codec — ONNX Runtime sessions and,
 * for large caches, a worker thread — is created here and released on every path, so a failure
 * anywhere (a foreign blob, a cache of the wrong shape) ends the command instead of leaving a
 * thread alive. Output paths are checked before any work.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { readBlobHeader } from './codec/blob.js';
import type { DecodeStats, EncodeStats, KvtcCodec } from './codec/codec.js';
import { KvtcError } from './errors.js';
import { writeFileAtomic } from './io/atomic.js';
import { checkOutputFile } from './io/output.js';
import { PRE_ROPE, readKvCache, writeKvCache } from './model/kv-io.js';
import type { KvCache } from './model/types.js';
import type { Device } from './onnx/session.js';
import { codecFromProfile, useTransformThread } from './profile/codec-from-profile.js';
import { checkCacheForProfile } from './profile/compat.js';
import { readProfile, type Profile } from './profile/read.js';

export interface FileJobOptions {
  /** Profile directory (or its kvtc-profile.json). */
  profile: string;
  out: string;
  device?: Device;
  /** Overwrite an existing output file. */
  force?: boolean;
  /** Use the transform worker thread (default: for large caches on multi-core machines). */
  transformThread?: boolean;
}

/** Runs `fn` with the profile's codec and releases the codec whatever happens. */
export async function withCodec<T>(
  profile: Profile,
  opts: { device?: Device; transformThread: boolean },
  fn: (codec: KvtcCodec) => Promise<T>,
): Promise<T> {
  const codec = await codecFromProfile(profile, opts);
  try {
    return await fn(codec);
  } finally {
    await codec.release();
  }
}

export interface CodecRunOptions {
  device?: Device;
  /** Use the transform worker thread (default: for large caches on multi-core machines). */
  transformThread?: boolean;
}

/** Encodes an in-memory cache with a profile; the codec is created and released here. */
export async function encodeCache(
  profile: Profile,
  cache: KvCache,
  opts: CodecRunOptions = {},
  source = 'the KV cache',
): Promise<{ blob: Uint8Array; stats: EncodeStats }> {
  const transformThread = opts.transformThread ?? useTransformThread(profile, cache.tokens);
  return withCodec(profile, { device: opts.device, transformThread }, async (codec) => {
    codec.checkCache(cache, source);
    return codec.encode(cache, source);
  });
}

/** Decodes an in-memory blob with the profile it was encoded with. */
export async function decodeBlob(
  profile: Profile,
  blob: Uint8Array,
  opts: CodecRunOptions & { source?: string } = {},
): Promise<{ cache: KvCache; stats: DecodeStats }> {
  const tokens = readBlobHeader(blob, opts.source).tokens;
  const transformThread = opts.transformThread ?? useTransformThread(profile, tokens);
  return withCodec(profile, { device: opts.device, transformThread }, (codec) => codec.decode(blob, opts.source));
}

export interface EncodeFileResult {
  out: string;
  profile: Profile;
  cache: KvCache;
  blob: Uint8Array;
  stats: EncodeStats;
}

/** Encodes the KV cache in safetensors file `kv` into a blob at `out`. */
export async function encodeFile(kv: string, opts: FileJobOptions): Promise<EncodeFileResult> {
  checkOutputFile(opts.out, { force: opts.force });
  const profile = await readProfile(opts.profile);
  // A format-3 profile's layers may be named by model layer (KV dumps) or in its own order.
  const { cache, metadata } = await readKvCache(kv, profile.manifest.model.cache_layers);
  if (metadata.keys === PRE_ROPE) {
    throw new KvtcError('KV_INVALID', `${kv} was written by \`kvtc capture --pre-rope\`: its keys have RoPE undone, for inspection`, {
      fix: 'Encode a cache captured without --pre-rope (kvtc undoes RoPE itself).',
      context: { kv },
    });
  }
  checkCacheForProfile(profile, kv, cache, metadata);
  const { blob, stats } = await encodeCache(profile, cache, opts, kv);
  await writeFileAtomic(opts.out, blob);
  return { out: opts.out, profile, cache, blob, stats };
}

export interface DecodeFileResult {
  out: string;
  profile: Profile;
  cache: KvCache;
  blobBytes: number;
  outBytes: number;
  stats: DecodeStats;
}

/** Decodes the blob file `input` into a safetensors KV cache at `out`. */
export async function decodeFile(input: string, opts: FileJobOptions): Promise<DecodeFileResult> {
  checkOutputFile(opts.out, { force: opts.force });
  if (!existsSync(input))
    throw new KvtcError('BLOB_INVALID', `blob ${input} does not exist`, { fix: 'Check the --in path.', context: { in: input } });
  const profile = await readProfile(opts.profile);
  const blob = new Uint8Array(await readFile(input));
  const { cache, stats } = await decodeBlob(profile, blob, { ...opts, source: input });
  const m = profile.manifest;
  const outBytes = await writeKvCache(opts.out, cache, {
    model: m.model.name,
    fingerprint: m.model.fingerprint.id,
    extra: { decoded_from: input, profile_id: m.profile_id },
  });
  return { out: opts.out, profile, cache, blobBytes: blob.byteLength, outBytes, stats };
}

// Tested by test/evaluate/evaluate-cli.test.ts and test/evaluate/scoring.test.ts.
/**
 * The codecs evaluate compares, behind one interface (CacheCodec): kvtc with a profile (or one
 * profile per ratio of a sweep), the baselines (fp16, int8, int4, KIVI-2), NVIDIA Dynamo's KVTC
 * kernels (emulated) and the identity control.
 */
import { basename } from 'node:path';
import { fp16BytesPerToken } from '../codec/blob.js';
import { BASELINE_NAMES, quantizedRange, runBaseline, type BaselineName } from '../codec/baselines.js';
import type { KvtcCodec } from '../codec/codec.js';
import { dynamoCodec } from '../dynamo/dynamo-codec.js';
import type { DynamoProfile } from '../dynamo/profile.js';
import { CALIBRATE_DEFAULTS } from '../defaults.js';
import { KvtcError, UsageError } from '../errors.js';
import type { Device } from '../onnx/session.js';
import { codecFromProfile } from '../profile/codec-from-profile.js';
import type { Profile } from '../profile/read.js';
import type { CacheCodec } from './cache-codec.js';

export type { CacheCodec, Reconstruction } from './cache-codec.js';

export type CodecName = 'kvtc' | 'identity' | 'dynamo' | BaselineName;

/** `identity` hands the scorer the very cache it was given: the exact no-op control. */
export const CODEC_NAMES: readonly CodecName[] = ['kvtc', 'identity', 'dynamo', ...BASELINE_NAMES];
export const DEFAULT_BASELINES: readonly CodecName[] = BASELINE_NAMES;

/** kvtc calibrate's defaults (src/defaults.ts): the protection the baselines get when no profile says otherwise. */
export const DEFAULT_SINK = CALIBRATE_DEFAULTS.sink;
export const DEFAULT_WINDOW = CALIBRATE_DEFAULTS.window;
/** KIVI's residual length: kivi2 keeps its own most recent tokens in fp16 (baselines.ts default). */
const KIVI_WINDOW = 128;

function kvtcAdapter(codec: KvtcCodec, name = 'kvtc'): CacheCodec {
  return {
    name,
    sink: codec.spec.sink,
    window: codec.spec.window,
    async apply(cache) {
      const { blob, stats } = await codec.encode(cache);
      const { cache: restored } = await codec.decode(blob);
      return {
        cache: restored,
        compressedTokens: stats.compressedTokens,
        bytes: stats.blobBytes,
        compressedBytes: stats.compressedTokens > 0 ? stats.compressedBytes : 0,
      };
    },
    release: () => codec.release(),
  };
}

function baselineAdapter(name: BaselineName, sink: number, window: number | undefined): CacheCodec {
  const options = { sinkTokens: sink, recentTokens: window };
  return {
    name,
    sink,
    window: window ?? KIVI_WINDOW,
    async apply(cache) {
      const r = runBaseline(name, cache, options);
      const { start, end } = quantizedRange(name, cache.tokens, options);
      const compressedTokens = end - start;
      const rawBytes = (cache.tokens - compressedTokens) * fp16BytesPerToken(cache);
      return { cache: r.cache, compressedTokens, bytes: r.bytes, compressedBytes: compressedTokens > 0 ? r.bytes - rawBytes : 0 };
    },
    release: async () => {},
  };
}

const identityAdapter: CacheCodec = {
  name: 'identity',
  sink: 0,
  window: 0,
  async apply(cache) {
    const bytes = cache.tokens * fp16BytesPerToken(cache) * (cache.dtype === 'float32' ? 2 : 1);
    return { cache, compressedTokens: 0, bytes, compressedBytes: 0 };
  },
  release: async () => {},
};

export interface CodecSetup {
  profile?: Profile;
  /** Several profiles (a ratio sweep): "kvtc" becomes one codec per profile, named by sweepNames. */
  profiles?: readonly Profile[];
  /** A `kvtc calibrate --target dynamo` profile: the "dynamo" codec runs the emulated Dynamo kernels. */
  dynamoProfile?: DynamoProfile;
  device?: Device;
}

/**
 * Codec names of a sweep's profiles: kvtc@<target ratio>x, with the directory name added where
 * two profiles share a target. One profile keeps the plain name "kvtc".
 */
export function sweepNames(profiles: readonly Profile[]): string[] {
  if (profiles.length === 1) return ['kvtc'];
  const label = (p: Profile) => `${p.manifest.settings.ratio_target}x`;
  const counts = new Map<string, number>();
  for (const p of profiles) counts.set(label(p), (counts.get(label(p)) ?? 0) + 1);
  const names = profiles.map((p) => `kvtc@${label(p)}${counts.get(label(p))! > 1 ? `:${basename(p.dir)}` : ''}`);
  const seen = new Map<string, Profile>();
  for (const p of profiles) {
    const other = seen.get(p.manifest.profile_id);
    if (other)
      throw new KvtcError('USAGE', `the same profile (id ${p.manifest.profile_id}) was given twice: ${other.dir} and ${p.dir}`, {
        fix: 'Pass each --profile once.',
        context: { profile_id: p.manifest.profile_id },
      });
    seen.set(p.manifest.profile_id, p);
  }
  // Two different profiles of one target ratio in directories of the same name
  // (/a/model-r16, /b/model-r16): their profile ids tell them apart.
  return names.map((n, i) => (names.indexOf(n) !== names.lastIndexOf(n) ? `${n}#${profiles[i].manifest.profile_id.slice(0, 8)}` : n));
}

export const isKvtcCodec = (name: string) => name === 'kvtc' || name.startsWith('kvtc@');

/** Throws USAGE naming the valid codecs unless every name is one. */
export function checkCodecNames(names: readonly string[]): asserts names is readonly CodecName[] {
  for (const n of names) {
    if (!(CODEC_NAMES as readonly string[]).includes(n))
      throw new UsageError(`unknown codec "${n}"; valid: ${CODEC_NAMES.join(', ')}`, `Pass codecs from: ${CODEC_NAMES.join(', ')}.`, {
        codec: n,
      });
  }
}

/**
 * The codecs an evaluation compares when none are named: kvtc when there is a profile, dynamo
 * when there is a Dynamo profile, then the baselines (fp16, int8, int4, kivi2).
 */
export function defaultCodecNames(has: { profile: boolean; dynamoProfile: boolean }): CodecName[] {
  return [
    ...(has.profile ? (['kvtc'] as CodecName[]) : []),
    ...(has.dynamoProfile ? (['dynamo'] as CodecName[]) : []),
    ...DEFAULT_BASELINES,
  ];
}

/**
 * Builds the codecs in the order asked. The baselines protect the same tokens as the
 * profile (sink and window), except kivi2, which keeps KIVI's own 128 recent tokens.
 */
export async function createCodecs(names: readonly CodecName[], setup: CodecSetup = {}): Promise<CacheCodec[]> {
  const profiles = setup.profiles ?? (setup.profile ? [setup.profile] : []);
  const first = profiles[0];
  const sink = first?.manifest.settings.sink ?? DEFAULT_SINK;
  const window = first?.manifest.settings.window ?? DEFAULT_WINDOW;
  const out: CacheCodec[] = [];
  try {
    for (const name of names) await add(name);
  } catch (e) {
    await Promise.all(out.map((c) => c.release()));
    throw e;
  }
  return out;

  async function add(name: CodecName): Promise<void> {
    if (name === 'kvtc') {
      if (!first) {
        throw new KvtcError('USAGE', 'the kvtc codec needs a profile', {
          fix: 'Pass --profile DIR (written by `kvtc calibrate`), or leave kvtc out of --codec.',
        });
      }
      const labels = sweepNames(profiles);
      for (const [i, p] of profiles.entries()) out.push(kvtcAdapter(await codecFromProfile(p, { device: setup.device }), labels[i]));
    } else if (name === 'dynamo') {
      if (!setup.dynamoProfile) {
        throw new KvtcError('USAGE', 'the dynamo codec needs a dynamo profile', {
          fix: 'Pass --dynamo-profile DIR (written by `kvtc calibrate --target dynamo`), or leave dynamo out of --codec.',
        });
      }
      out.push(dynamoCodec(setup.dynamoProfile));
    } else if (name === 'identity') {
      out.push(identityAdapter);
    } else {
      out.push(baselineAdapter(name, sink, name === 'kivi2' ? undefined : window));
    }
  }
}

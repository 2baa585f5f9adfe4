// Tested by test/codec/codec.test.ts.
import { availableParallelism } from 'node:os';
import { KvtcCodec, type CodecOptions, type CodecSpec } from '../codec/codec.js';
import { fp16BytesPerToken, type EntropyCoder } from '../codec/blob.js';
import { ropeFromManifest } from './rope.js';
import { specFormat3Fields } from './format3.js';
import type { Profile } from './read.js';

export { ropeFromManifest } from './rope.js';

/** The codec a profile describes, with its graphs on the chosen execution provider. */
export function codecFromProfile(profile: Profile, opts: CodecOptions = {}): Promise<KvtcCodec> {
  const m = profile.manifest;
  return KvtcCodec.create(
    {
      layers: m.model.layers,
      kvHeads: m.model.kv_heads,
      headDim: m.model.head_dim,
      // Format 3: value heads of their own width; the cache's model layers and shard (informational).
      ...codecFormat3(m),
      rope: ropeFromManifest(m),
      profileId: m.profile_id,
      sink: m.settings.sink,
      window: m.settings.window,
      entropy: m.settings.entropy as EntropyCoder,
      ...(m.model.max_positions !== undefined ? { maxPositions: m.model.max_positions } : {}),
    },
    profile.plans,
    opts,
  );
}

/** The CodecSpec fields a format-3 manifest adds (none for format 1–2). */
function codecFormat3(m: Profile['manifest']): Pick<CodecSpec, 'valueDim' | 'cacheLayers' | 'shard'> {
  const f = specFormat3Fields(m);
  return {
    ...(f.valueDim !== undefined ? { valueDim: f.valueDim } : {}),
    ...(f.cacheLayers !== undefined ? { cacheLayers: f.cacheLayers } : {}),
    ...(f.shard !== undefined ? { shard: f.shard } : {}),
  };
}

/** Caches at least this large (fp16 bytes) amortize the codec's worker-thread start-up. */
const THREADED_MIN_BYTES = 16 * 1024 * 1024;

/** Whether a cache of `tokens` tokens is worth the transform thread on this machine. */
export function useTransformThread(profile: Profile, tokens: number): boolean {
  const m = profile.manifest.model;
  return (
    availableParallelism() > 1 &&
    tokens * fp16BytesPerToken({ layers: m.layers, kvHeads: m.kv_heads, headDim: m.head_dim, valueDim: m.value_head_dim }) >=
      THREADED_MIN_BYTES
  );
}

// Tested by test/evaluate/perplexity-proxy.test.ts.
/** What evaluate asks of a codec: reconstruct a cache with honest byte counts. Types only, so codecs in any folder implement it without an import cycle. */
import type { KvCache } from '../model/types.js';

/** What a codec did to one cache, with honest byte counts. */
export interface Reconstruction {
  cache: KvCache;
  /** Tokens of the cache that went through the lossy path (outside the protected ones). */
  compressedTokens: number;
  /** Stored bytes for the whole cache / for the compressed tokens only. */
  bytes: number;
  compressedBytes: number;
}

export interface CacheCodec {
  /** A CodecName, or kvtc@<label> for one profile of a ratio sweep. */
  name: string;
  /** Protected tokens at each end, kept exactly (or in fp16): the leading sink and the most recent `window` (a profile's settings.window). */
  sink: number;
  window: number;
  apply(cache: KvCache): Promise<Reconstruction>;
  release(): Promise<void>;
}

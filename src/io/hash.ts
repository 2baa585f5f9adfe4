// Tested by test/io/hash.test.ts.
/** The one sha256 kvtc hashes files and ids with (profiles, dynamo profiles, pinned fixtures). */
import { createHash } from 'node:crypto';

/**
 * Bytes per Hash.update call. Node refuses a single update over 2 GiB ("data is too long"), and a
 * Dynamo profile at 4x for SmolLM2-135M's 60 bases (3,072 × 3,072 floats each) is 2.26 GB: a
 * 45-minute calibration ended in exit 70 at the write. Chunking gives the same digest.
 */
export const HASH_CHUNK_BYTES = 256 * 1024 * 1024;

/** sha256 of bytes (or of a string's UTF-8), as 64 lowercase hex digits. */
export function sha256(data: Uint8Array | string, chunkBytes = HASH_CHUNK_BYTES): string {
  const h = createHash('sha256');
  if (typeof data === 'string') return h.update(data).digest('hex');
  for (let at = 0; at < data.byteLength; at += chunkBytes) h.update(data.subarray(at, Math.min(data.byteLength, at + chunkBytes)));
  return h.digest('hex');
}

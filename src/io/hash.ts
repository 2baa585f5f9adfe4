// Tested by test/io/hash.test.ts.
/** The one sha256 kvtc hashes files and ids with (profiles, dynamo profiles, pinned fixtures). */
import { createHash } from 'node:crypto';

/** sha256 of bytes (or of a string's UTF-8), as 64 lowercase hex digits. */
export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

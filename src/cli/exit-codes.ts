// Tested by test/cli/exit-codes.test.ts and test/cli/contract.test.ts.
/**
 * The one table from error codes to exit codes (README "Output contract"). The core throws
 * typed errors and never picks an exit code; src/cli/main.ts asks this table. A Record over
 * every ErrorCode, so a new code does not compile until it is given an exit code here.
 */
import type { ErrorCode, KvtcError } from '../errors.js';

export const EXIT_OK = 0;
/** Bad input: a missing or corrupt model, profile, blob, cache or text file; an output that cannot be written. */
export const EXIT_INPUT = 1;
/** Usage: an unknown option, a value out of range. */
export const EXIT_USAGE = 2;
/** The accuracy gate failed (`evaluate --max-drop`). */
export const EXIT_THRESHOLD = 3;
/** A bug in kvtc, nothing else (sysexits' EX_SOFTWARE). */
export const EXIT_INTERNAL = 70;
/** Interrupted (128 + SIGINT). */
export const EXIT_INTERRUPTED = 130;

export const EXIT_CODES: Readonly<Record<ErrorCode, number>> = {
  USAGE: EXIT_USAGE,
  MODEL_NOT_FOUND: EXIT_INPUT,
  MODEL_INVALID: EXIT_INPUT,
  UNSUPPORTED_ARCHITECTURE: EXIT_INPUT,
  ROPE_MISMATCH: EXIT_INPUT,
  TOKENIZER_MISSING: EXIT_INPUT,
  DEVICE_UNAVAILABLE: EXIT_INPUT,
  DATA_INVALID: EXIT_INPUT,
  NOT_ENOUGH_TOKENS: EXIT_INPUT,
  SAFETENSORS_INVALID: EXIT_INPUT,
  GGUF_INVALID: EXIT_INPUT,
  GGUF_UNSUPPORTED: EXIT_INPUT,
  FETCH_FAILED: EXIT_INPUT,
  KV_INVALID: EXIT_INPUT,
  KV_OUT_OF_RANGE: EXIT_INPUT,
  PROFILE_INVALID: EXIT_INPUT,
  PROFILE_MISMATCH: EXIT_INPUT,
  PROFILE_VERSION: EXIT_INPUT,
  BLOB_INVALID: EXIT_INPUT,
  BLOB_MISMATCH: EXIT_INPUT,
  OUTPUT_EXISTS: EXIT_INPUT,
  OUTPUT_UNWRITABLE: EXIT_INPUT,
  IO_ERROR: EXIT_INPUT,
  INTERRUPTED: EXIT_INTERRUPTED,
  THRESHOLD_EXCEEDED: EXIT_THRESHOLD,
  INTERNAL: EXIT_INTERNAL,
};

/**
 * The exit code the CLI returns for an error. A code outside the table can only come from a
 * worker thread's message (src/codec/transform.ts); it keeps the generic failure, 1.
 */
export function exitCodeFor(e: Pick<KvtcError, 'code'>): number {
  return Object.hasOwn(EXIT_CODES, e.code) ? EXIT_CODES[e.code] : EXIT_INPUT;
}

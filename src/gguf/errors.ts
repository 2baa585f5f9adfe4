// Tested by test/gguf/read.test.ts and test/gguf/fuzz.test.ts.
/** The two GGUF error shapes: a malformed file (GGUF_INVALID) and a valid one kvtc cannot read (GGUF_UNSUPPORTED). */
import { KvtcError } from '../errors.js';

const INVALID_FIX =
  'The file is truncated, corrupted or not a GGUF model: download it again, or re-create it with llama.cpp (convert_hf_to_gguf.py).';

/** A malformed or truncated GGUF; the message starts with the file's path. */
export function ggufInvalid(path: string, message: string, context: Record<string, unknown> = {}, fix = INVALID_FIX): KvtcError {
  return new KvtcError('GGUF_INVALID', `${path}: ${message}`, { fix, context: { file: path, ...context } });
}

/** A GGUF kvtc cannot read; `fix` says what to use instead. */
export function ggufUnsupported(path: string, message: string, fix: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('GGUF_UNSUPPORTED', `${path}: ${message}`, { fix, context: { file: path, ...context } });
}

// Tested by test/cli/contract.test.ts.
/**
 * Typed errors. The core throws these and never chooses an exit code: the code says what went
 * wrong, and only the CLI's table (src/cli/exit-codes.ts) turns a code into an exit code.
 * Every error names the problem (message), the offending value (context) and what to
 * do instead (fix).
 */
export type ErrorCode =
  | 'USAGE'
  | 'MODEL_NOT_FOUND'
  | 'MODEL_INVALID'
  | 'UNSUPPORTED_ARCHITECTURE'
  /** The captured keys contradict the RoPE kvtc read from the model's config (src/rope/data-check.ts). */
  | 'ROPE_MISMATCH'
  | 'TOKENIZER_MISSING'
  | 'DEVICE_UNAVAILABLE'
  | 'DATA_INVALID'
  | 'NOT_ENOUGH_TOKENS'
  | 'SAFETENSORS_INVALID'
  /** A GGUF file that is malformed, truncated, or lacks metadata/tensors a converter needs (src/gguf/). */
  | 'GGUF_INVALID'
  /** A well-formed GGUF kvtc cannot read: v1 or big-endian files, nested arrays, tensor types without a dequantizer. */
  | 'GGUF_UNSUPPORTED'
  /** `kvtc fetch-model` could not download or unpack a model package (no python3/pip, no network, a changed package). */
  | 'FETCH_FAILED'
  | 'KV_INVALID'
  | 'KV_OUT_OF_RANGE'
  | 'PROFILE_INVALID'
  | 'PROFILE_MISMATCH'
  | 'PROFILE_VERSION'
  | 'BLOB_INVALID'
  | 'BLOB_MISMATCH'
  | 'OUTPUT_EXISTS'
  | 'OUTPUT_UNWRITABLE'
  | 'IO_ERROR'
  | 'INTERRUPTED'
  | 'THRESHOLD_EXCEEDED'
  | 'INTERNAL';

export interface ErrorDetails {
  fix?: string;
  context?: Record<string, unknown>;
  cause?: unknown;
  /** A result that exists despite the failure (the --max-drop gate): --json prints it beside "error". */
  result?: Record<string, unknown>;
}

export class KvtcError extends Error {
  readonly code: ErrorCode;
  readonly fix?: string;
  readonly context?: Record<string, unknown>;
  readonly result?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'KvtcError';
    this.code = code;
    this.fix = details.fix;
    this.context = details.context;
    this.result = details.result;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, fix: this.fix, context: this.context };
  }
}

/** Bad options, from the command line or a library call: an unknown value, a value out of range. */
export class UsageError extends KvtcError {
  constructor(message: string, fix?: string, context?: Record<string, unknown>) {
    super('USAGE', message, { fix, context });
    this.name = 'UsageError';
  }
}

/** The user stopped the work (Ctrl-C, an aborted signal); the message says what was kept. */
export class InterruptedError extends KvtcError {
  constructor(message: string, fix?: string, context?: Record<string, unknown>) {
    super('INTERRUPTED', message, { fix, context });
    this.name = 'InterruptedError';
  }
}

/** Calibration (either target) stopped before writing anything: one message wherever it stops. */
export function calibrationInterrupted(): InterruptedError {
  return new InterruptedError('calibration interrupted; nothing was written', 'Re-run the command to calibrate.');
}

/** A bug in kvtc, not in the user's input. */
export class InternalError extends KvtcError {
  constructor(message: string, cause?: unknown) {
    super('INTERNAL', message, { cause, fix: 'This is a kvtc bug: please report it with the command you ran.' });
    this.name = 'InternalError';
  }
}

/** An error about one input file: the message starts with the file, and the context names it. */
export function fileError(code: ErrorCode, file: string, message: string, fix: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError(code, `${file}: ${message}`, { fix, context: { file, ...context } });
}

export function isKvtcError(e: unknown): e is KvtcError {
  return e instanceof KvtcError;
}

/** Assertion for internal invariants; the message names the op and the shapes. */
export function invariant(cond: unknown, message: string): asserts cond {
  if (!cond) throw new InternalError(message);
}

// Tested by test/cli/contract.test.ts.
/**
 * kvtc's JSON output contract (README, "Output contract"): with --json, stdout carries exactly one
 * JSON document per run. Success: the command's result object. Failure: {"error": {code, message,
 * fix, context}}; where a result exists despite the failure (the --max-drop gate, a report that
 * could not be written) its keys stand beside "error", in the same shape as on success. Keys are
 * snake_case throughout; values (subject names, file names) are left as they are.
 */
import type { KvtcError } from '../errors.js';
import type { CliIO } from './io.js';

const snake = (k: string) =>
  k
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/([A-Z])([A-Z][a-z])/g, '$1_$2')
    .toLowerCase();

/** Deep copy with every object key in snake_case. */
export function snakeKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(snakeKeys);
  if (v && typeof v === 'object' && !ArrayBuffer.isView(v) && !(v instanceof Date)) {
    return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [snake(k), snakeKeys(x)]));
  }
  if (typeof v === 'number' && !Number.isFinite(v)) return null; // JSON has no NaN/Infinity
  return v;
}

export function jsonText(v: unknown): string {
  return JSON.stringify(snakeKeys(v), null, 2);
}

/** Prints a command's result as the run's one JSON document. */
export function printJson(io: CliIO, result: unknown): void {
  io.out(jsonText(result));
}

/** The error document; `result` keys (if any) stand beside "error". */
export function errorDocument(e: KvtcError, result?: Record<string, unknown>): Record<string, unknown> {
  return { ...(result ?? {}), error: e.toJSON() };
}

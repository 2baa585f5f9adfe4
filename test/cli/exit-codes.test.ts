/** The one table from error codes to exit codes (src/cli/exit-codes.ts) against the README's "Output contract". */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { EXIT_CODES, exitCodeFor } from '../../src/cli/exit-codes.js';
import { main } from '../../src/cli/main.js';
import { memoryIO } from '../../src/cli/io.js';
import {
  calibrationInterrupted,
  fileError,
  InternalError,
  InterruptedError,
  KvtcError,
  UsageError,
  type ErrorCode,
} from '../../src/errors.js';

const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

describe('exit codes', () => {
  it('usage 2, the accuracy gate 3, a kvtc bug 70, interrupted 130, any other failure 1', () => {
    const special: Partial<Record<ErrorCode, number>> = { USAGE: 2, THRESHOLD_EXCEEDED: 3, INTERNAL: 70, INTERRUPTED: 130 };
    for (const [code, exit] of Object.entries(EXIT_CODES)) expect([code, exit]).toEqual([code, special[code as ErrorCode] ?? 1]);
  });

  it('every exit code in the table is one the README documents', () => {
    const section = README.slice(README.indexOf('## Output contract'), README.indexOf('## Your files'));
    for (const exit of new Set(Object.values(EXIT_CODES))) expect(section).toContain(`\`${exit}\``);
  });

  it('the typed errors carry codes, not exit codes', () => {
    expect(exitCodeFor(new UsageError('x'))).toBe(2);
    expect(exitCodeFor(new InternalError('x'))).toBe(70);
    expect(exitCodeFor(new InterruptedError('x'))).toBe(130);
    expect(exitCodeFor(new KvtcError('PROFILE_INVALID', 'x'))).toBe(1);
    expect(new UsageError('x')).not.toHaveProperty('exitCode');
    // A code from a worker thread's message that the table lacks keeps the generic failure.
    expect(exitCodeFor({ code: 'SOMETHING_NEW' as ErrorCode })).toBe(1);
  });

  it('one "calibration interrupted" error for both targets', () => {
    const e = calibrationInterrupted();
    expect(e).toMatchObject({
      code: 'INTERRUPTED',
      message: 'calibration interrupted; nothing was written',
      fix: 'Re-run the command to calibrate.',
    });
    expect(e.toJSON()).toEqual({ code: 'INTERRUPTED', message: e.message, fix: e.fix, context: undefined });
  });

  it('fileError: the message starts with the file, the context names it beside the rest', () => {
    const e = fileError('KV_INVALID', 'kv.safetensors', 'no layers', 'Re-create it.', { layers: 0 });
    expect(e.toJSON()).toEqual({
      code: 'KV_INVALID',
      message: 'kv.safetensors: no layers',
      fix: 'Re-create it.',
      context: { file: 'kv.safetensors', layers: 0 },
    });
    expect(exitCodeFor(e)).toBe(1);
  });

  it("main() returns the table's code for a thrown error", async () => {
    const io = memoryIO();
    expect(await main(['node', 'kvtc', 'inspect', '/nonexistent/profile', '--json'], io)).toBe(EXIT_CODES.PROFILE_INVALID);
    expect(JSON.parse(io.stdout.join('\n')).error.code).toBe('PROFILE_INVALID');
    expect(await main(['node', 'kvtc', 'encode', '--device', 'gpu', '--profile', 'p', '--kv', 'k', '--out', 'o'], memoryIO())).toBe(
      EXIT_CODES.USAGE,
    );
  });
});

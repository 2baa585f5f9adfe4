// Tested by test/cli/contract.test.ts.
/**
 * Option value schemas shared by every command, with messages in kvtc's words: each names the
 * valid range (parseOptions adds the option and the bad value). Commander hands values over as
 * strings, so numbers are parsed strictly here ("12abc" and "" are errors, not NaN or 0).
 */
import { z } from 'zod';
import { DEVICES } from '../onnx/devices.js';

const range = (min?: number, max?: number) =>
  min !== undefined && max !== undefined
    ? `between ${min} and ${max}`
    : min !== undefined
      ? `≥ ${min}`
      : max !== undefined
        ? `≤ ${max}`
        : '';

/** A whole number within [min, max]. */
export function wholeNumber(min: number, max?: number) {
  const msg = `must be a whole number ${range(min, max)}`;
  return z.union([z.string(), z.number()], { message: msg }).transform((v, ctx) => {
    const n = typeof v === 'number' ? v : /^\s*[+-]?\d+\s*$/.test(v) ? Number(v) : NaN;
    if (!Number.isSafeInteger(n) || n < min || (max !== undefined && n > max)) {
      ctx.addIssue({ code: 'custom', message: msg });
      return z.NEVER;
    }
    return n;
  });
}

/** A finite number within [min, max]. */
export function decimal(min?: number, max?: number) {
  const msg = `must be a number ${range(min, max)}`;
  return z.union([z.string(), z.number()], { message: msg }).transform((v, ctx) => {
    const n = typeof v === 'number' ? v : /^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$/.test(v) ? Number(v) : NaN;
    if (!Number.isFinite(n) || (min !== undefined && n < min) || (max !== undefined && n > max)) {
      ctx.addIssue({ code: 'custom', message: msg });
      return z.NEVER;
    }
    return n;
  });
}

/** --device: one of the execution providers kvtc knows. */
export const deviceSchema = z
  .enum(DEVICES as unknown as [string, ...string[]], { message: `must be one of: ${DEVICES.join(', ')}` })
  .transform((d) => d as (typeof DEVICES)[number]);

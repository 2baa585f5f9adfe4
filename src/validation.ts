// Tested by test/model/cli.test.ts (bad option values) and test/cli/contract.test.ts.
import type { z } from 'zod';
import { UsageError } from './errors.js';

/** zod issues as `path: message` lines. */
export function formatZodIssues(error: z.ZodError): string {
  return error.issues.map((i) => `  ${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('\n');
}

/** zod's own wording for an issue, in kvtc's words (the schemas give most messages themselves). */
function issueMessage(i: z.core.$ZodIssue): string {
  const x = i as z.core.$ZodIssue & { minimum?: number; maximum?: number; values?: unknown[]; expected?: string };
  if (!/^(Too small|Too big|Invalid input|Invalid option|Expected|Invalid)/.test(i.message)) return i.message;
  switch (i.code) {
    case 'too_small':
      return `must be at least ${x.minimum}`;
    case 'too_big':
      return `must be at most ${x.maximum}`;
    case 'invalid_value':
      return `must be one of: ${(x.values ?? []).map(String).join(', ')}`;
    case 'invalid_type':
      return x.expected === 'number' ? 'must be a number' : x.expected === 'string' ? 'must be given a value' : `must be a ${x.expected}`;
    default:
      return 'is not a valid value';
  }
}

/**
 * Parses command options with a zod schema; failures are UsageErrors naming the option, the bad
 * value and what is valid. `raw._command` (set by the CLI) names the command in the fix.
 */
export function parseOptions<S extends z.ZodType>(schema: S, opts: unknown): z.infer<S> {
  const r = schema.safeParse(opts);
  if (r.success) return r.data;
  const raw = (opts && typeof opts === 'object' ? opts : {}) as Record<string, unknown>;
  const lines = r.error.issues.map((i) => {
    const key = String(i.path[0] ?? '');
    const flag = key && key !== '_' ? `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}` : key === '_' ? 'arguments' : 'options';
    const value = key ? raw[key] : undefined;
    return `${flag}${value !== undefined ? ` ${JSON.stringify(value)}` : ''}: ${issueMessage(i)}`;
  });
  const command = typeof raw._command === 'string' ? raw._command : '<command>';
  throw new UsageError(
    `invalid option${lines.length > 1 ? 's' : ''}:\n  ${lines.join('\n  ')}`,
    `See \`kvtc ${command} --help\` for the valid values, defaults and examples.`,
    { options: lines },
  );
}

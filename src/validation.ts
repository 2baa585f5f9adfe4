import type { z } from 'zod';
import { UsageError } from './errors.js';

/** zod issues as `path: message` lines. */
export function formatZodIssues(error: z.ZodError): string {
  return error.issues.map((i) => `  ${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('\n');
}

/** Parses command options with a zod schema; failures are UsageErrors naming the option and value. */
export function parseOptions<S extends z.ZodType>(schema: S, opts: unknown): z.infer<S> {
  const r = schema.safeParse(opts);
  if (r.success) return r.data;
  const lines = r.error.issues.map((i) => {
    const key = String(i.path[0] ?? '');
    const flag = key ? `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}` : 'options';
    const value = key && opts && typeof opts === 'object' ? (opts as Record<string, unknown>)[key] : undefined;
    return `${flag}${value !== undefined ? ` ${JSON.stringify(value)}` : ''}: ${i.message}`;
  });
  throw new UsageError(`invalid option${lines.length > 1 ? 's' : ''}:\n  ${lines.join('\n  ')}`, 'See `kvtc <command> --help` for valid values.');
}

/** Peak-memory helpers shared by the benchmark scripts (scale-bench.ts, block-eigen-bench.ts). */
import { readFileSync } from 'node:fs';

/** The process's peak resident set (VmHWM from /proc/self/status) in bytes; null off Linux. */
export function vmHwm(): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Bytes as GiB with two decimals; 'n/a' for null. */
export const gib = (b: number | null): string => (b === null ? 'n/a' : `${(b / 2 ** 30).toFixed(2)} GiB`);

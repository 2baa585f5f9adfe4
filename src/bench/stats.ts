// Tested by test/bench/bench.test.ts.
/** Repeated timings: median with min and max, as the bench reports every figure. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  runs: number;
}

export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const m = s.length >> 1;
  const median = s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  return { median, min: s[0], max: s[s.length - 1], runs: s.length };
}

/** Seconds per call of `fn`, `repeats` times (after `warmup` untimed calls). */
export async function timeRepeats(repeats: number, fn: () => unknown | Promise<unknown>, warmup = 1): Promise<Summary> {
  for (let i = 0; i < warmup; i++) await fn();
  const out: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t = performance.now();
    await fn();
    out.push((performance.now() - t) / 1000);
  }
  return summarize(out);
}

/** Per-key medians/min/max of repeated stage breakdowns ({gather: s, ...}). */
export function summarizeStages(runs: Record<string, number>[]): Record<string, Summary> {
  const keys = Object.keys(runs[0] ?? {});
  return Object.fromEntries(keys.map((k) => [k, summarize(runs.map((r) => r[k]))]));
}

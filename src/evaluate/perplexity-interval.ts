// Tested by test/evaluate/perplexity-interval.test.ts.
/**
 * 95% intervals of perplexity and of each codec's perplexity increase, by a paired block
 * bootstrap over the scored tokens.
 *
 * Adjacent tokens' NLLs are correlated (a hard passage makes several tokens in a row hard), so
 * resampling single tokens would treat them as independent and understate the interval. The
 * scored tokens of each window are cut into blocks of PERPLEXITY_BLOCK_TOKENS consecutive tokens
 * (the last block of a window may be shorter); the blocks of all windows are pooled and resampled
 * with replacement, the same blocks for the uncompressed run and every codec (paired), and
 * perplexity is recomputed per resample as exp(Σ NLL / Σ tokens) over the drawn blocks.
 * Journals written before blocks were recorded hold only each window's sums: their windows are
 * then the resampled units (a coarser, still valid bootstrap), and with a single window there is
 * nothing to resample, so the interval is null with a note saying why.
 */
import { invariant } from '../errors.js';
import type { PerplexityWindow } from './records.js';
import { mulberry32, quantile, type BootstrapOptions } from './stats.js';

/**
 * Scored tokens per bootstrap block: long enough that most of the dependence between adjacent
 * tokens' NLLs stays inside a block, short enough that a 512-token window (128 scored) gives 4
 * blocks and a few thousand tokens of text give dozens to resample.
 */
export const PERPLEXITY_BLOCK_TOKENS = 32;

/** How a perplexity interval was computed (PerplexityResult.interval). */
export interface PerplexityIntervalInfo {
  /** 'block': blocks of block_tokens scored tokens pooled over windows; 'window': whole windows; null: no interval. */
  method: 'block' | 'window' | null;
  block_tokens: number | null;
  /** Units resampled (blocks or windows). */
  units: number;
  resamples: number;
  seed: number;
  confidence: number;
  /** Why the interval is coarser than blocks, or missing; null when it is the block bootstrap. */
  note: string | null;
}

/** One resampling unit: its scored tokens and NLL sums (nats), uncompressed and per codec (in codec order). */
export interface NllUnit {
  tokens: number;
  baseline: number;
  codecs: readonly number[];
  /** Per codec, Σ next-token KL and Σ top-1 agreement over the unit's tokens; absent when not recorded. */
  kl?: readonly number[];
  top1?: readonly number[];
}

export interface PerplexityIntervals {
  baseline: [number, number];
  /** Per codec, in the units' codec order. */
  codecs: { delta: [number, number]; deltaPercent: [number, number]; kl?: [number, number]; top1?: [number, number] }[];
}

/** Σ of each run of `block` consecutive values of nll: Float64Array // [tokens] → [ceil(tokens / block)]. */
export function blockSums(nll: ArrayLike<number>, block: number): number[] {
  invariant(Number.isInteger(block) && block >= 1, `Error in blockSums: block must be a positive integer, got ${block}`);
  const out: number[] = [];
  for (let i = 0; i < nll.length; i += block) {
    let s = 0;
    for (let j = i; j < Math.min(nll.length, i + block); j++) s += nll[j];
    out.push(s);
  }
  return out;
}

/**
 * Paired bootstrap of perplexity over units: per resample, units.length indices drawn with
 * floor(rng()·units.length) from mulberry32(seed); the uncompressed perplexity, and per codec
 * Δ = ppl_codec − ppl_base and Δ% = 100·(ppl_codec / ppl_base − 1), over the drawn units.
 * Percentile intervals. A codec whose NLLs equal the baseline's gives exactly [0, 0].
 */
export function bootstrapPerplexity(units: readonly NllUnit[], options: BootstrapOptions = {}): PerplexityIntervals {
  const { resamples = 10_000, seed = 0, confidence = 0.95 } = options;
  const n = units.length;
  invariant(n > 0, 'Error in bootstrapPerplexity: no units');
  const k = units[0].codecs.length;
  invariant(
    units.every((u) => u.codecs.length === k && u.tokens > 0),
    'Error in bootstrapPerplexity: units differ in codecs or have no tokens',
  );
  invariant(resamples >= 1 && confidence > 0 && confidence < 1, 'Error in bootstrapPerplexity: bad resamples or confidence');
  const base = new Float64Array(resamples);
  const delta = Array.from({ length: k }, () => new Float64Array(resamples));
  const pct = Array.from({ length: k }, () => new Float64Array(resamples));
  const sums = new Float64Array(k);
  // KL and top-1 agreement: means per token over the same drawn units, when every unit has them.
  const withKl = units.every((u) => u.kl?.length === k && u.top1?.length === k);
  const klMean = withKl ? Array.from({ length: k }, () => new Float64Array(resamples)) : [];
  const top1Mean = withKl ? Array.from({ length: k }, () => new Float64Array(resamples)) : [];
  const klSums = new Float64Array(k);
  const top1Sums = new Float64Array(k);
  const rng = mulberry32(seed);
  for (let r = 0; r < resamples; r++) {
    let tokens = 0;
    let b = 0;
    sums.fill(0);
    klSums.fill(0);
    top1Sums.fill(0);
    for (let i = 0; i < n; i++) {
      const u = units[Math.floor(rng() * n)];
      tokens += u.tokens;
      b += u.baseline;
      for (let c = 0; c < k; c++) sums[c] += u.codecs[c];
      if (withKl) {
        for (let c = 0; c < k; c++) {
          klSums[c] += u.kl![c];
          top1Sums[c] += u.top1![c];
        }
      }
    }
    const pb = Math.exp(b / tokens);
    base[r] = pb;
    for (let c = 0; c < k; c++) {
      const pc = Math.exp(sums[c] / tokens);
      delta[c][r] = pc - pb;
      pct[c][r] = 100 * (pc / pb - 1);
      if (withKl) {
        klMean[c][r] = klSums[c] / tokens;
        top1Mean[c][r] = top1Sums[c] / tokens;
      }
    }
  }
  const alpha = (1 - confidence) / 2;
  const ci = (xs: Float64Array): [number, number] => {
    xs.sort();
    return [quantile(xs, alpha), quantile(xs, 1 - alpha)];
  };
  return {
    baseline: ci(base),
    codecs: delta.map((d, c) => ({
      delta: ci(d),
      deltaPercent: ci(pct[c]),
      ...(withKl ? { kl: ci(klMean[c]), top1: ci(top1Mean[c]) } : {}),
    })),
  };
}

/**
 * The resampling units of scored windows: their blocks when every window recorded them, else
 * the windows themselves (journals from before blocks were recorded), else none.
 */
export function perplexityUnits(
  windows: readonly PerplexityWindow[],
  codecNames: readonly string[],
): { method: 'block' | 'window' | null; blockTokens: number | null; units: NllUnit[]; note: string | null } {
  const blockTokens = windows[0]?.blockTokens;
  const haveBlocks =
    blockTokens !== undefined &&
    windows.every(
      (w) =>
        w.blockTokens === blockTokens &&
        w.baselineBlockNll !== undefined &&
        w.baselineBlockNll.length === Math.ceil(w.scored / blockTokens) &&
        codecNames.every((c) => w.codecs[c]?.blockNll?.length === w.baselineBlockNll!.length),
    );
  if (haveBlocks) {
    const units: NllUnit[] = [];
    for (const w of windows) {
      const kl = codecNames.every(
        (c) => w.codecs[c].blockKl?.length === w.baselineBlockNll!.length && w.codecs[c].blockTop1?.length === w.baselineBlockNll!.length,
      );
      w.baselineBlockNll!.forEach((b, j) =>
        units.push({
          tokens: Math.min(blockTokens, w.scored - j * blockTokens),
          baseline: b,
          codecs: codecNames.map((c) => w.codecs[c].blockNll![j]),
          ...(kl ? { kl: codecNames.map((c) => w.codecs[c].blockKl![j]), top1: codecNames.map((c) => w.codecs[c].blockTop1![j]) } : {}),
        }),
      );
    }
    if (units.length >= 2) return { method: 'block', blockTokens, units, note: null };
    return {
      method: null,
      blockTokens,
      units: [],
      note: `only ${units.length} block of scored tokens: nothing to resample (score more text with --perplexity-tokens, or use a smaller --perplexity-window for several windows)`,
    };
  }
  const old = 'the windows were scored by a kvtc that recorded no per-block NLLs (a resumed journal)';
  if (windows.length >= 2)
    return {
      method: 'window',
      blockTokens: null,
      units: windows.map((w) => ({ tokens: w.scored, baseline: w.baselineNll, codecs: codecNames.map((c) => w.codecs[c].nll) })),
      note: `${old}: whole windows were resampled instead of blocks of ${PERPLEXITY_BLOCK_TOKENS} tokens, a coarser interval`,
    };
  return {
    method: null,
    blockTokens: null,
    units: [],
    note: `${old} and there is ${windows.length} window: no interval (rerun with --fresh for per-block intervals)`,
  };
}

// Tested by test/evaluate/perplexity-proxy.test.ts.
/**
 * Perplexity on held-out text (WikiText-2 test) with and without a compressed cache.
 *
 * The text is cut into non-overlapping windows of the model's context (or of --perplexity-window
 * tokens, for several windows out of a long text). In each window the
 * first `context` tokens are prefilled (all but the last go into the cache), every codec
 * reconstructs that cache, and the remaining tokens are scored against the original and
 * each reconstruction with the same forward pass: perplexity = exp(mean NLL) over the
 * scored tokens. The context part is long enough that tokens outside sink + window exist.
 * Each window also records its NLL sums per block of PERPLEXITY_BLOCK_TOKENS scored tokens, from
 * which perplexity-interval.ts bootstraps the 95% intervals.
 */
import { invariant, KvtcError, UsageError } from '../errors.js';
import type { ModelRunner } from '../model/runner.js';
import type { KvCache } from '../model/types.js';
import type { ProgressFn } from '../progress.js';
import type { CacheCodec } from './cache-codec.js';
import type { PerplexityWindow } from './records.js';
import { passTokens } from './memory.js';
import {
  bootstrapPerplexity,
  blockSums,
  PERPLEXITY_BLOCK_TOKENS,
  perplexityUnits,
  type PerplexityIntervalInfo,
} from './perplexity-interval.js';

export interface PerplexityOptions {
  /** Tokens of text to use (whole windows only). */
  tokens: number;
  /** Share of each window that is prefilled and compressed; the rest is scored. Default 0.75. */
  contextFraction?: number;
  /** Tokens per window, ≥ 64 and ≤ the model's context; default the model's context, capped by the text. */
  window?: number;
  /** Bootstrap seed of the intervals (evaluate's --seed); default 0. */
  seed?: number;
  /** Bootstrap resamples; default 10,000. */
  resamples?: number;
  onProgress?: ProgressFn;
}

/** Smallest --perplexity-window: below it the scored quarter of a window is a handful of tokens. */
export const MIN_PERPLEXITY_WINDOW = 64;

export interface PerplexityScore {
  /** Mean negative log-likelihood per scored token, nats. */
  nll: number;
  perplexity: number;
}

export interface PerplexityResult {
  /** File name of the text scored (set by evaluate). */
  source?: string;
  /** Tokens used: windows × window. */
  tokens: number;
  windows: number;
  window: number;
  /** Prefilled tokens per window (the cache holds context − 1 of them). */
  context: number;
  scored_tokens: number;
  baseline: PerplexityScore & {
    /** Bootstrap 95% interval of the perplexity; null when there is nothing to resample (interval.note). */
    perplexity_ci95: [number, number] | null;
  };
  codecs: Record<
    string,
    PerplexityScore & {
      compressed_share: number;
      /** ppl_codec − ppl_uncompressed, with its paired bootstrap 95% interval. */
      delta: number;
      delta_ci95: [number, number] | null;
      /** 100 · (ppl_codec / ppl_uncompressed − 1), with its paired bootstrap 95% interval. */
      delta_percent: number;
      delta_percent_ci95: [number, number] | null;
      /**
       * Mean next-token KL(uncompressed ‖ codec) per scored token, nats, over the whole vocabulary,
       * and the share of scored tokens whose top-1 prediction is unchanged, each with its paired
       * bootstrap 95% interval (the same resamples as Δ). Null when the windows did not record
       * them (journals of builds before 2026-12-07).
       */
      next_token_kl: number | null;
      next_token_kl_ci95: [number, number] | null;
      top1_agreement: number | null;
      top1_agreement_ci95: [number, number] | null;
    }
  >;
  /** How the intervals were computed. */
  interval: PerplexityIntervalInfo;
}

/** The first `count` tokens of `text` (no BOS), tokenizing only as much text as needed. */
export function leadingTokens(encode: (text: string) => number[], text: string, count: number): number[] {
  let chars = Math.min(text.length, count * 8);
  for (;;) {
    const ids = encode(text.slice(0, chars));
    // The last token of a cut text may be a fragment: keep a margin beyond `count`.
    if (ids.length > count || chars >= text.length) return ids.slice(0, count);
    chars = Math.min(text.length, chars * 2);
  }
}

/**
 * −log p(target) from one row of logits: logSoftmax(row)[target] (stats.ts) with the same
 * float64 arithmetic, without allocating a vocabulary-sized array per row.
 */
export function rowNll(row: Float32Array, target: number): number {
  let m = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > m) m = row[i];
  if (m === -Infinity) return NaN;
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i] - m);
  return -(row[target] - m - Math.log(s));
}

/**
 * Next-token KL(p ‖ q) in nats between the softmax distributions of two logit rows over the whole
 * vocabulary (p: the uncompressed cache's row, q: a codec's), in float64 without a
 * vocabulary-sized array, and whether their argmax (first index of the maximum) is the same.
 * Equal rows give exactly 0.
 */
export function rowKl(p: Float32Array, q: Float32Array): { kl: number; top1: boolean } {
  let mp = -Infinity;
  let mq = -Infinity;
  let ap = -1;
  let aq = -1;
  for (let i = 0; i < p.length; i++) {
    if (p[i] > mp) {
      mp = p[i];
      ap = i;
    }
    if (q[i] > mq) {
      mq = q[i];
      aq = i;
    }
  }
  if (mp === -Infinity || mq === -Infinity) return { kl: NaN, top1: false };
  let sp = 0;
  let sq = 0;
  for (let i = 0; i < p.length; i++) {
    sp += Math.exp(p[i] - mp);
    sq += Math.exp(q[i] - mq);
  }
  const lp = mp + Math.log(sp);
  const lq = mq + Math.log(sq);
  let kl = 0;
  for (let i = 0; i < p.length; i++) {
    const a = p[i] - lp;
    kl += Math.exp(a) * (a - (q[i] - lq));
  }
  return { kl: Math.max(0, kl), top1: ap === aq };
}

/**
 * Σ −log p(targets[j]) with logits: Float32Array // [targets.length, vocab]; each term is also
 * written to perToken[offset + j] (perToken: Float64Array // [scored tokens of the window]).
 */
function sumNll(logits: Float32Array, targets: readonly number[], vocab: number, perToken: Float64Array, offset: number): number {
  let s = 0;
  for (let j = 0; j < targets.length; j++) {
    const x = rowNll(logits.subarray(j * vocab, (j + 1) * vocab), targets[j]);
    perToken[offset + j] = x;
    s += x;
  }
  return s;
}

/** How a text is cut into perplexity windows (planPerplexity). */
export interface PerplexityPlan {
  /** Token ids of the text used: windows × window of them. */
  ids: number[];
  windows: number;
  window: number;
  /** Prefilled tokens per window. */
  context: number;
}

/** A --perplexity-window the model can score (USAGE otherwise); checked before any scoring, as the run may be long. */
export function checkPerplexityWindow(window: number | undefined, maxPositions: number): void {
  if (window === undefined || (Number.isInteger(window) && window >= MIN_PERPLEXITY_WINDOW && window <= maxPositions)) return;
  throw new UsageError(
    `--perplexity-window ${window}: a window must be a whole number of tokens from ${MIN_PERPLEXITY_WINDOW} to the model's context (${maxPositions})`,
    `Pass --perplexity-window between ${MIN_PERPLEXITY_WINDOW} and ${maxPositions}, or leave it out for windows of the model's context.`,
    { value: window, max_positions: maxPositions },
  );
}

export function planPerplexity(
  runner: ModelRunner,
  text: string,
  opts: Pick<PerplexityOptions, 'tokens' | 'contextFraction' | 'window'>,
): PerplexityPlan {
  const { maxPositions } = runner.spec;
  const fraction = opts.contextFraction ?? 0.75;
  invariant(fraction > 0 && fraction < 1, `evaluatePerplexity: contextFraction must be in (0, 1), got ${fraction}`);
  const tokenizer = runner.model.tokenizer;
  checkPerplexityWindow(opts.window, maxPositions);
  const ids = leadingTokens((t) => tokenizer.encode(t, { addBos: false }), text, opts.tokens);
  const window = Math.min(opts.window ?? maxPositions, ids.length);
  const context = Math.floor(window * fraction);
  if (context < 2 || window - context < 1) {
    throw new KvtcError('NOT_ENOUGH_TOKENS', `perplexity needs at least 3 tokens of text, got ${ids.length}`, {
      context: { tokens: ids.length },
      fix: 'Pass a larger --perplexity-tokens (or 0 to skip perplexity).',
    });
  }
  const windows = Math.floor(ids.length / window);
  return { ids: ids.slice(0, windows * window), windows, window, context };
}

/**
 * Scores window `w` of the plan, uncompressed and with every codec. Each reconstruction is
 * scored and dropped before the next codec runs, so one codec's cache is alive at a time.
 */
export async function scorePerplexityWindow(
  runner: ModelRunner,
  codecs: readonly CacheCodec[],
  plan: PerplexityPlan,
  w: number,
  /** Tokens per forward pass; default passTokens(vocabulary). */
  chunk?: number,
  /** Checked between codecs: null when it aborted (the window is not half-scored). */
  signal?: AbortSignal,
): Promise<PerplexityWindow | null> {
  const { window, context } = plan;
  const vocabSize = runner.spec.vocabSize;
  const win = plan.ids.slice(w * window, (w + 1) * window);
  // Cache: win[0, context−1); fed: win[context−1, window−1); targets: win[context, window).
  const step = chunk ?? passTokens(vocabSize);
  const { cache } = await runner.prefill(win.slice(0, context - 1), { chunk: step });
  const fed = win.slice(context - 1, window - 1);
  const targets = win.slice(context);
  // Fed in pieces of `step` tokens, each extending the cache of the ones before, so no pass
  // returns more than MAX_LOGITS_BYTES of logits (memory.ts).
  const perToken = new Float64Array(targets.length);
  const kl = new Float64Array(targets.length);
  const top1 = new Float64Array(targets.length);
  // With `ref` (the uncompressed cache), each piece is also fed on it, and every scored row's
  // next-token KL and top-1 agreement against the uncompressed row are taken (one more forward
  // pass of the scored tokens per codec, instead of holding the uncompressed logits).
  const score = async (past: KvCache, ref?: KvCache) => {
    let nll = 0;
    let cur = past;
    let refCur = ref;
    for (let i = 0; i < fed.length; i += step) {
      const piece = fed.slice(i, i + step);
      const r = await runner.forward(piece, cur);
      nll += sumNll(r.logits, targets.slice(i, i + step), vocabSize, perToken, i);
      cur = r.present;
      if (refCur) {
        const b = await runner.forward(piece, refCur);
        refCur = b.present;
        for (let j = 0; j < piece.length; j++) {
          const row = rowKl(b.logits.subarray(j * vocabSize, (j + 1) * vocabSize), r.logits.subarray(j * vocabSize, (j + 1) * vocabSize));
          kl[i + j] = row.kl;
          top1[i + j] = row.top1 ? 1 : 0;
        }
      }
    }
    const blocks = blockSums(perToken, PERPLEXITY_BLOCK_TOKENS);
    return ref
      ? { nll, blocks, kl: blockSums(kl, PERPLEXITY_BLOCK_TOKENS), top1: blockSums(top1, PERPLEXITY_BLOCK_TOKENS) }
      : { nll, blocks };
  };
  const base = await score(cache);
  const out: PerplexityWindow = {
    index: w,
    scored: targets.length,
    cacheTokens: cache.tokens,
    baselineNll: base.nll,
    blockTokens: PERPLEXITY_BLOCK_TOKENS,
    baselineBlockNll: base.blocks,
    codecs: {},
  };
  for (const codec of codecs) {
    if (signal?.aborted) return null;
    const rec = await codec.apply(cache);
    const s = await score(rec.cache, cache);
    out.codecs[codec.name] = { nll: s.nll, compressedTokens: rec.compressedTokens, blockNll: s.blocks, blockKl: s.kl, blockTop1: s.top1 };
  }
  return out;
}

/**
 * The perplexity result of scored windows, summed in window order (as one uninterrupted pass sums
 * them), with the bootstrap intervals of perplexity-interval.ts (seeded by `bootstrap.seed`).
 */
export function combinePerplexity(
  plan: PerplexityPlan,
  windows: readonly PerplexityWindow[],
  codecNames: readonly string[],
  bootstrap: { seed?: number; resamples?: number } = {},
): PerplexityResult {
  const sorted = [...windows].sort((a, b) => a.index - b.index);
  let baseNll = 0;
  let scored = 0;
  const nll: Record<string, number> = Object.fromEntries(codecNames.map((c) => [c, 0]));
  const compressed: Record<string, number> = Object.fromEntries(codecNames.map((c) => [c, 0]));
  const sum = (xs: readonly number[]) => xs.reduce((a, x) => a + x, 0);
  // KL and agreement only when every window recorded them for this codec.
  const kl: Record<string, number | null> = Object.fromEntries(codecNames.map((c) => [c, 0]));
  const top1: Record<string, number | null> = Object.fromEntries(codecNames.map((c) => [c, 0]));
  for (const w of sorted) {
    baseNll += w.baselineNll;
    scored += w.scored;
    for (const c of codecNames) {
      const r = w.codecs[c];
      nll[c] += r.nll;
      compressed[c] += r.compressedTokens;
      kl[c] = r.blockKl && kl[c] !== null ? kl[c] + sum(r.blockKl) : null;
      top1[c] = r.blockTop1 && top1[c] !== null ? top1[c] + sum(r.blockTop1) : null;
    }
  }
  const result = (sum: number): PerplexityScore => ({ nll: sum / scored, perplexity: Math.exp(sum / scored) });
  const n = sorted.length;
  const seed = bootstrap.seed ?? 0;
  const resamples = bootstrap.resamples ?? 10_000;
  const units = perplexityUnits(sorted, codecNames);
  const ci = units.method ? bootstrapPerplexity(units.units, { seed, resamples }) : null;
  const base = result(baseNll);
  return {
    tokens: n * plan.window,
    windows: n,
    window: plan.window,
    context: plan.context,
    scored_tokens: scored,
    baseline: { ...base, perplexity_ci95: ci?.baseline ?? null },
    codecs: Object.fromEntries(
      codecNames.map((c, k) => {
        const r = result(nll[c]);
        return [
          c,
          {
            ...r,
            compressed_share: compressed[c] / (n * plan.context),
            delta: r.perplexity - base.perplexity,
            delta_ci95: ci?.codecs[k].delta ?? null,
            delta_percent: 100 * (r.perplexity / base.perplexity - 1),
            delta_percent_ci95: ci?.codecs[k].deltaPercent ?? null,
            next_token_kl: kl[c] === null || !scored ? null : kl[c] / scored,
            next_token_kl_ci95: kl[c] === null ? null : (ci?.codecs[k].kl ?? null),
            top1_agreement: top1[c] === null || !scored ? null : top1[c] / scored,
            top1_agreement_ci95: top1[c] === null ? null : (ci?.codecs[k].top1 ?? null),
          },
        ];
      }),
    ),
    interval: {
      method: units.method,
      block_tokens: units.blockTokens,
      units: units.units.length,
      resamples,
      seed,
      confidence: 0.95,
      note: units.note,
    },
  };
}

export async function evaluatePerplexity(
  runner: ModelRunner,
  text: string,
  codecs: readonly CacheCodec[],
  opts: PerplexityOptions,
): Promise<PerplexityResult> {
  const plan = planPerplexity(runner, text, opts);
  const windows: PerplexityWindow[] = [];
  for (let w = 0; w < plan.windows; w++) {
    windows.push((await scorePerplexityWindow(runner, codecs, plan, w))!);
    opts.onProgress?.({ stage: 'perplexity', done: w + 1, total: plan.windows, unit: 'window' });
  }
  return combinePerplexity(
    plan,
    windows,
    codecs.map((c) => c.name),
    { seed: opts.seed, resamples: opts.resamples },
  );
}

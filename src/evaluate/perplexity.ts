// Tested by test/evaluate/perplexity-proxy.test.ts.
/**
 * Perplexity on held-out text (WikiText-2 test) with and without a compressed cache.
 *
 * The text is cut into non-overlapping windows of the model's context. In each window the
 * first `context` tokens are prefilled (all but the last go into the cache), every codec
 * reconstructs that cache, and the remaining tokens are scored against the original and
 * each reconstruction with the same forward pass: perplexity = exp(mean NLL) over the
 * scored tokens. The context part is long enough that tokens outside sink + window exist.
 */
import { invariant, KvtcError } from '../errors.js';
import type { ModelRunner } from '../model/runner.js';
import type { KvCache } from '../model/types.js';
import type { ProgressFn } from '../progress.js';
import type { CacheCodec } from './cache-codec.js';
import type { PerplexityWindow } from './records.js';
import { passTokens } from './memory.js';

export interface PerplexityOptions {
  /** Tokens of text to use (whole windows only). */
  tokens: number;
  /** Share of each window that is prefilled and compressed; the rest is scored. Default 0.75. */
  contextFraction?: number;
  onProgress?: ProgressFn;
}

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
  baseline: PerplexityScore;
  codecs: Record<string, PerplexityScore & { compressed_share: number }>;
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

/** Σ −log p(targets[j]) with logits: Float32Array // [targets.length, vocab]. */
function sumNll(logits: Float32Array, targets: readonly number[], vocab: number): number {
  let s = 0;
  for (let j = 0; j < targets.length; j++) s += rowNll(logits.subarray(j * vocab, (j + 1) * vocab), targets[j]);
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

export function planPerplexity(
  runner: ModelRunner,
  text: string,
  opts: Pick<PerplexityOptions, 'tokens' | 'contextFraction'>,
): PerplexityPlan {
  const { maxPositions } = runner.spec;
  const fraction = opts.contextFraction ?? 0.75;
  invariant(fraction > 0 && fraction < 1, `evaluatePerplexity: contextFraction must be in (0, 1), got ${fraction}`);
  const tokenizer = runner.model.tokenizer;
  const ids = leadingTokens((t) => tokenizer.encode(t, { addBos: false }), text, opts.tokens);
  const window = Math.min(maxPositions, ids.length);
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
  const score = async (past: KvCache) => {
    let nll = 0;
    let cur = past;
    for (let i = 0; i < fed.length; i += step) {
      const r = await runner.forward(fed.slice(i, i + step), cur);
      nll += sumNll(r.logits, targets.slice(i, i + step), vocabSize);
      cur = r.present;
    }
    return nll;
  };
  const out: PerplexityWindow = {
    index: w,
    scored: targets.length,
    cacheTokens: cache.tokens,
    baselineNll: await score(cache),
    codecs: {},
  };
  for (const codec of codecs) {
    if (signal?.aborted) return null;
    const rec = await codec.apply(cache);
    out.codecs[codec.name] = { nll: await score(rec.cache), compressedTokens: rec.compressedTokens };
  }
  return out;
}

/** The perplexity result of scored windows, summed in window order (as one uninterrupted pass sums them). */
export function combinePerplexity(
  plan: PerplexityPlan,
  windows: readonly PerplexityWindow[],
  codecNames: readonly string[],
): PerplexityResult {
  const sorted = [...windows].sort((a, b) => a.index - b.index);
  let baseNll = 0;
  let scored = 0;
  const nll: Record<string, number> = Object.fromEntries(codecNames.map((c) => [c, 0]));
  const compressed: Record<string, number> = Object.fromEntries(codecNames.map((c) => [c, 0]));
  for (const w of sorted) {
    baseNll += w.baselineNll;
    scored += w.scored;
    for (const c of codecNames) {
      nll[c] += w.codecs[c].nll;
      compressed[c] += w.codecs[c].compressedTokens;
    }
  }
  const result = (sum: number): PerplexityScore => ({ nll: sum / scored, perplexity: Math.exp(sum / scored) });
  const n = sorted.length;
  return {
    tokens: n * plan.window,
    windows: n,
    window: plan.window,
    context: plan.context,
    scored_tokens: scored,
    baseline: result(baseNll),
    codecs: Object.fromEntries(codecNames.map((c) => [c, { ...result(nll[c]), compressed_share: compressed[c] / (n * plan.context) }])),
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
  );
}

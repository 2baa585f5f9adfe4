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
import { logSoftmax } from './stats.js';

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

/** Σ −log p(targets[j]) with logits: Float32Array // [targets.length, vocab]. */
function sumNll(logits: Float32Array, targets: readonly number[], vocab: number): number {
  let s = 0;
  for (let j = 0; j < targets.length; j++) s -= logSoftmax(logits.subarray(j * vocab, (j + 1) * vocab))[targets[j]];
  return s;
}

export async function evaluatePerplexity(
  runner: ModelRunner,
  text: string,
  codecs: readonly CacheCodec[],
  opts: PerplexityOptions,
): Promise<PerplexityResult> {
  const { maxPositions, vocabSize } = runner.spec;
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
  let baseNll = 0;
  const nll: Record<string, number> = Object.fromEntries(codecs.map((c) => [c.name, 0]));
  const compressed: Record<string, number> = Object.fromEntries(codecs.map((c) => [c.name, 0]));
  let scored = 0;
  for (let w = 0; w < windows; w++) {
    const win = ids.slice(w * window, (w + 1) * window);
    // Cache: win[0, context−1); fed: win[context−1, window−1); targets: win[context, window).
    const { cache } = await runner.prefill(win.slice(0, context - 1));
    const fed = win.slice(context - 1, window - 1);
    const targets = win.slice(context);
    const score = async (past: KvCache) => sumNll((await runner.forward(fed, past)).logits, targets, vocabSize);
    baseNll += await score(cache);
    for (const codec of codecs) {
      const rec = await codec.apply(cache);
      compressed[codec.name] += rec.compressedTokens;
      nll[codec.name] += await score(rec.cache);
    }
    scored += targets.length;
    opts.onProgress?.({ stage: 'perplexity', done: w + 1, total: windows, unit: 'window' });
  }
  const result = (sum: number): PerplexityScore => ({ nll: sum / scored, perplexity: Math.exp(sum / scored) });
  return {
    tokens: windows * window,
    windows,
    window,
    context,
    scored_tokens: scored,
    baseline: result(baseNll),
    codecs: Object.fromEntries(
      codecs.map((c) => [c.name, { ...result(nll[c.name]), compressed_share: compressed[c.name] / (windows * context) }]),
    ),
  };
}

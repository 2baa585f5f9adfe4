/**
 * Log-likelihood scoring of answer continuations, as lm-evaluation-harness does it
 * (lm_eval/api/model.py TemplateLM._encode_pair and HFLM._loglikelihood_tokens), split so
 * that a KV cache sits between the context and the continuation:
 *
 *   context_enc = encode(context); whole_enc = encode(context + continuation)
 *   continuation_enc = whole_enc[len(context_enc):]
 *   inputs = (context_enc + continuation_enc)[-(max_length + 1):][:-1]   (left truncation)
 *
 * The cache holds context[0 .. n−1); the last context token is fed together with the
 * continuation, so its logits (which predict the first continuation token) are computed
 * against the cache under test, restored or not.
 */
import { KvtcError, invariant } from '../errors.js';
import type { ModelRunner } from '../model/runner.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import type { KvCache } from '../model/types.js';
import { logSoftmax } from './stats.js';

/** One context as a set of continuations sees it after left truncation. */
export interface ContextGroup {
  /** Context token ids (BOS first unless truncated away). */
  tokens: number[];
  /** Tokens dropped from the left so every input fits the model's positions. */
  truncated: number;
  /** Indices of the continuations scored after this context. */
  members: number[];
}

export interface EncodedRequest {
  /** Token ids of each continuation (never empty). */
  continuations: number[][];
  /**
   * Distinct truncated contexts. One when the prompt fits (the usual case); when it does
   * not, continuations of different lengths keep different amounts of context, exactly as
   * the harness truncates each (context, continuation) pair on its own.
   */
  contexts: ContextGroup[];
  /** Context tokens before truncation. */
  contextTokens: number;
}

/**
 * Tokenizes a context and its continuations the harness way. BOS is added as the model's
 * tokenizer config says.
 */
export function encodeRequest(
  tokenizer: ModelTokenizer,
  context: string,
  continuations: readonly string[],
  maxPositions: number,
): EncodedRequest {
  const ctx = tokenizer.encode(context);
  const conts = continuations.map((c) => {
    const whole = tokenizer.encode(context + c);
    const tokens = whole.slice(ctx.length);
    if (tokens.length === 0) {
      throw new KvtcError('DATA_INVALID', `continuation ${JSON.stringify(c)} encodes to no tokens after the context`, {
        context: { continuation: c },
        fix: 'Score a non-empty continuation.',
      });
    }
    return tokens;
  });
  const groups = new Map<number, ContextGroup>();
  conts.forEach((cont, i) => {
    // Inputs are context + continuation[:-1]: at most maxPositions of them.
    const keep = maxPositions + 1 - cont.length;
    if (keep < 1) {
      throw new KvtcError('DATA_INVALID', `a continuation of ${cont.length} tokens does not fit in the model's ${maxPositions} positions`, {
        context: { tokens: cont.length, maxPositions },
        fix: 'Use a model with a longer context.',
      });
    }
    const truncated = Math.max(0, ctx.length - keep);
    let g = groups.get(truncated);
    if (!g) groups.set(truncated, (g = { tokens: truncated > 0 ? ctx.slice(truncated) : ctx, truncated, members: [] }));
    g.members.push(i);
  });
  return { continuations: conts, contexts: [...groups.values()], contextTokens: ctx.length };
}

/**
 * Which forward passes score a set of continuations after one cache. Continuation c needs
 * the logits of inputs [last, ...c[:-1]]; by causality any input that starts with those
 * tokens gives them, so only inputs that are not a prefix of another one are run. With the
 * MMLU letters this is one pass for all four.
 */
export interface ScoringPlan {
  /** Token ids fed after the cache, one forward pass each. */
  inputs: number[][];
  /** For each continuation: which input's logits rows 0..len−1 predict its tokens. */
  source: number[];
}

export function planScoring(lastToken: number, continuations: readonly number[][]): ScoringPlan {
  const needed = continuations.map((c) => [lastToken, ...c.slice(0, -1)]);
  const order = needed.map((_, i) => i).sort((a, b) => needed[b].length - needed[a].length);
  const inputs: number[][] = [];
  const source = new Array<number>(continuations.length);
  for (const i of order) {
    const need = needed[i];
    let k = inputs.findIndex((inp) => inp.length >= need.length && need.every((t, j) => inp[j] === t));
    if (k < 0) {
      inputs.push(need);
      k = inputs.length - 1;
    }
    source[i] = k;
  }
  return { inputs, source };
}

/**
 * Sum of log p(continuation tokens) for each continuation, given `past` (the cache of the
 * context without its last token, or null when the context is one token) and the plan's
 * inputs. Returns Float64Array // [continuations].
 */
export async function scoreContinuations(
  runner: ModelRunner,
  past: KvCache | null,
  continuations: readonly number[][],
  plan: ScoringPlan,
): Promise<Float64Array> {
  const vocab = runner.spec.vocabSize;
  const logits: Float32Array[] = [];
  for (const input of plan.inputs) {
    const r = await runner.forward(input, past, past ? {} : { startPosition: 0 });
    invariant(
      r.logits.length === input.length * vocab,
      `Error in scoreContinuations: logits have ${r.logits.length} values, expected [${input.length}, ${vocab}]`,
    );
    logits.push(r.logits);
  }
  // Rows shared by several continuations (the first row, always) are normalized once.
  const normalized = new Map<string, Float64Array>();
  const row = (k: number, j: number) => {
    const key = `${k}:${j}`;
    let r = normalized.get(key);
    if (!r) normalized.set(key, (r = logSoftmax(logits[k].subarray(j * vocab, (j + 1) * vocab))));
    return r;
  };
  const out = new Float64Array(continuations.length);
  continuations.forEach((c, i) => {
    let s = 0;
    for (let j = 0; j < c.length; j++) s += row(plan.source[i], j)[c[j]];
    out[i] = s;
  });
  return out;
}

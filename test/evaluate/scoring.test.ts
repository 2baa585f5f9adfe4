import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import { loadSubject } from '../../src/evaluate/mmlu.js';
import { buildPrompt, CONTINUATIONS, loadShots } from '../../src/evaluate/prompt.js';
import { createCodecs } from '../../src/evaluate/codecs.js';
import { runEvaluation } from '../../src/evaluate/run.js';
import { encodeRequest, planScoring, scoreContinuations } from '../../src/evaluate/scoring.js';
import { DEFAULT_MODEL_DIR, MMLU_DIR } from '../../src/paths.js';

let runner: ModelRunner;

beforeAll(async () => {
  runner = new ModelRunner(await loadModel(DEFAULT_MODEL_DIR));
});

/** log softmax of one row, float64, written out here so the check does not share code with stats.ts. */
function logProb(row: Float32Array, token: number): number {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  return row[token] - max - Math.log(sum);
}

/**
 * The harness's loglikelihood for one (context, continuation) pair, with no cache at all:
 * one forward pass over (context + continuation)[-(max_length+1):][:-1], log-probs read at
 * the continuation's positions (HFLM._loglikelihood_tokens).
 */
async function harnessLogLikelihood(context: string, continuation: string): Promise<number> {
  const tok = runner.model.tokenizer;
  const maxLength = runner.spec.maxPositions;
  const contextEnc = tok.encode(context);
  const contEnc = tok.encode(context + continuation).slice(contextEnc.length);
  const inp = [...contextEnc, ...contEnc].slice(-(maxLength + 1)).slice(0, -1);
  const { logits } = await runner.forward(inp, null);
  const vocab = runner.spec.vocabSize;
  let sum = 0;
  contEnc.forEach((t, j) => {
    const row = inp.length - contEnc.length + j;
    sum += logProb(logits.subarray(row * vocab, (row + 1) * vocab), t);
  });
  return sum;
}

/** kvtc's path: prefill all but the last context token, then score through the cache. */
async function cachedLogLikelihoods(context: string): Promise<{ scores: number[]; truncated: number; contexts: number }> {
  const req = encodeRequest(runner.model.tokenizer, context, CONTINUATIONS, runner.spec.maxPositions);
  const scores = new Array<number>(4);
  for (const g of req.contexts) {
    const conts = g.members.map((i) => req.continuations[i]);
    const { cache } = await runner.prefill(g.tokens.slice(0, -1));
    const s = await scoreContinuations(runner, cache, conts, planScoring(g.tokens[g.tokens.length - 1], conts));
    g.members.forEach((i, k) => (scores[i] = s[k]));
  }
  return { scores, truncated: Math.max(...req.contexts.map((g) => g.truncated)), contexts: req.contexts.length };
}

describe('MMLU scoring through a KV cache', () => {
  it('equals an independent full-pass computation of the four continuation log-likelihoods', async () => {
    const geo = (await loadSubject(MMLU_DIR, 'high_school_geography', 'test')).slice(0, 4);
    const history = (await loadSubject(MMLU_DIR, 'high_school_european_history', 'test'))[0];
    const shots = await loadShots(MMLU_DIR, 'high_school_geography', 5);
    const prompts = [
      ...geo.map((q) => buildPrompt('high_school_geography', q)),
      // These two are longer than the model's 512 positions: truncated from the left as the
      // harness does, " B" (one token) keeping one more context token than " A", " C", " D".
      buildPrompt('high_school_geography', geo[0], shots),
      buildPrompt('high_school_european_history', history),
    ];
    let truncatedSeen = 0;
    for (const prompt of prompts) {
      const mine = await cachedLogLikelihoods(prompt);
      if (mine.truncated > 0) {
        truncatedSeen++;
        expect(mine.contexts).toBe(2);
      }
      const theirs = await Promise.all(CONTINUATIONS.map((c) => harnessLogLikelihood(prompt, c)));
      for (let i = 0; i < 4; i++) expect(mine.scores[i]).toBeCloseTo(theirs[i], 4);
      const argmax = (xs: number[]) => xs.indexOf(Math.max(...xs));
      expect(argmax(mine.scores)).toBe(argmax(theirs));
    }
    expect(truncatedSeen).toBe(2);
  });

  it('tokenizes continuations from context + continuation and needs one forward pass for A-D', () => {
    const tok = runner.model.tokenizer;
    const req = encodeRequest(tok, 'Question?\nAnswer:', CONTINUATIONS, runner.spec.maxPositions);
    const ctx = tok.encode('Question?\nAnswer:');
    expect(req.contexts).toEqual([{ tokens: ctx, truncated: 0, members: [0, 1, 2, 3] }]);
    for (let i = 0; i < 4; i++) expect(req.continuations[i]).toEqual(tok.encode(`Question?\nAnswer:${CONTINUATIONS[i]}`).slice(ctx.length));
    // This sentencepiece vocabulary splits " A" into "▁" + "A" but has "▁B": mixed lengths.
    expect(new Set(req.continuations.map((c) => c.length)).size).toBeGreaterThan(1);
    const plan = planScoring(ctx[ctx.length - 1], req.continuations);
    expect(plan.inputs).toHaveLength(1);
    expect(plan.source).toEqual([0, 0, 0, 0]);
  });

  it('truncates each continuation length on its own when the prompt is too long', () => {
    const tok = runner.model.tokenizer;
    const long = `${'Once upon a time there was a cat. '.repeat(80)}\nAnswer:`;
    const req = encodeRequest(tok, long, CONTINUATIONS, 512);
    for (const g of req.contexts) {
      for (const i of g.members) expect(g.tokens.length + req.continuations[i].length - 1).toBe(512);
      expect(g.truncated).toBe(req.contextTokens - g.tokens.length);
    }
  });
});

describe('identity and fp16 codecs on the bundled model', () => {
  it('identity: delta 0, agreement 1, KL 0 and the same log-likelihoods, exactly', async () => {
    const codecs = await createCodecs(['identity', 'fp16']);
    const r = await runEvaluation({ runner, subjects: ['high_school_geography'], limit: 12, shots: 0, codecs, perplexityTokens: 0 });
    const o = r.summary.overall;
    expect(o.n).toBe(12);
    const id = o.codecs.identity;
    expect(id.delta_points).toBe(0);
    expect(id.delta_ci95).toEqual([0, 0]);
    expect(id.agreement).toBe(1);
    expect(id.kl).toBe(0);
    for (const q of r.questions) expect(q.codecs.identity.logLik).toEqual(q.baseline.logLik);
    // The model's KV is float32, so fp16 rounds it: not bit-exact, but the answers must not move.
    expect(r.questions[0].codecs.fp16.logLik).not.toEqual(r.questions[0].baseline.logLik);
    expect(o.codecs.fp16.agreement).toBe(1);
    expect(o.codecs.fp16.delta_points).toBe(0);
    expect(o.codecs.fp16.kl).toBeLessThan(1e-4);
  });

  it('counts prompts too short to compress, and never credits the codec with them', async () => {
    const codecs = await createCodecs(['int4']);
    const r = await runEvaluation({ runner, subjects: ['high_school_geography'], limit: 30, shots: 0, codecs, perplexityTokens: 0 });
    const c = r.summary.overall.codecs.int4;
    const short = r.questions.filter((q) => q.cacheTokens <= 4 + 128);
    expect(c.uncompressed_questions).toBe(short.length);
    expect(c.compressed_only?.n).toBe(30 - short.length);
    for (const q of short) expect(q.codecs.int4.compressedTokens).toBe(0);
    const expectedShare =
      r.questions.reduce((s, q) => s + Math.max(0, q.cacheTokens - 132), 0) / r.questions.reduce((s, q) => s + q.promptTokens, 0);
    expect(c.compressed_share).toBeCloseTo(expectedShare, 12);
  });
});

describe('perplexity', () => {
  it('identity matches the uncompressed cache exactly; a lossy codec differs', async () => {
    const codecs = await createCodecs(['identity', 'int4']);
    const r = await runEvaluation({ runner, subjects: ['high_school_geography'], limit: 1, shots: 0, codecs, perplexityTokens: 1024 });
    const p = r.perplexity!;
    expect(p).toMatchObject({ windows: 2, window: 512, context: 384, scored_tokens: 256 });
    expect(p.codecs.identity.perplexity).toBe(p.baseline.perplexity);
    expect(p.codecs.int4.perplexity).not.toBe(p.baseline.perplexity);
    expect(p.codecs.int4.compressed_share).toBeCloseTo((383 - 132) / 384, 12);
    expect(p.baseline.perplexity).toBeGreaterThan(1);
  });
});

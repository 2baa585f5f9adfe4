// Tested by test/evaluate/evaluate-cli.test.ts, test/evaluate/scoring.test.ts and test/evaluate/longcontext.test.ts.
/**
 * `kvtc evaluate`'s scoring loop, for a loaded model and built codecs (evaluate.ts loads and
 * builds them for the library call and the CLI): paired MMLU runs (uncompressed cache vs each codec's
 * reconstruction of the same cache, same questions) and WikiText-2 perplexity. Returns
 * per-question records and their summary; never prints (progress goes to a callback).
 *
 * Per question: prefill context[0 .. n−1) once; every codec reconstructs that one cache;
 * the four continuations are scored against the original and against each reconstruction
 * with the same forward passes (scoring.ts), so differences come from the cache alone.
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { readTextFile } from '../io/text.js';
import { fp16BytesPerToken } from '../codec/blob.js';
import { InterruptedError, KvtcError } from '../errors.js';
import type { ModelRunner } from '../model/runner.js';
import type { KvCache } from '../model/types.js';
import { MMLU_DIR, WIKITEXT_TEST } from '../paths.js';
import type { ProgressFn } from '../progress.js';
import { loadSubject, type MmluQuestion } from './mmlu.js';
import { evaluatePerplexity, type PerplexityResult } from './perplexity.js';
import { buildPrompt, CONTINUATIONS, loadShots } from './prompt.js';
import { summarize, type EvaluateSummary, type ScopeSummary } from './summary.js';
import type { CodecOutcome, QuestionRecord } from './records.js';
import type { CacheCodec } from './cache-codec.js';
import { buildLongContextTasks, fillerSentences, LONG_CONTEXT_KINDS } from './longcontext.js';
import { encodeRequest, planScoring, scoreContinuations, type EncodedRequest } from './scoring.js';
import { argmax } from './stats.js';

export interface EvaluateOptions {
  runner: ModelRunner;
  subjects: readonly string[];
  /** Questions per subject (first N of the test split); all when undefined. */
  limit?: number;
  shots: number;
  codecs: readonly CacheCodec[];
  /** WikiText-2 test tokens for perplexity; 0 skips it. */
  perplexityTokens: number;
  seed?: number;
  mmluDir?: string;
  /** Filler for the long-context tasks, and the perplexity text unless perplexityTextPath is given. */
  wikitextPath?: string;
  /** Text for the perplexity proxy (default WikiText-2 test). */
  perplexityTextPath?: string;
  onProgress?: ProgressFn;
  /**
   * Ctrl-C: stop after the question being scored and return what was scored, marked partial
   * (perplexity is skipped). Aborting before the first question is scored throws INTERRUPTED.
   */
  signal?: AbortSignal;
  /** Long-context tasks (RULER-style needle and variable tracking); none when perKind is 0. */
  longContext?: { perKind: number; contextTokens: number };
}

export interface LongContextResult {
  tasks: Record<string, number>;
  /** Mean prompt tokens per task. */
  context_tokens: number;
  overall: ScopeSummary;
  kinds: Record<string, ScopeSummary>;
  questions: QuestionRecord[];
}

export interface EvaluateTiming {
  seconds: number;
  mmluSeconds: number;
  questionsPerSecond: number;
  prefillSeconds: number;
  scoringSeconds: number;
  /** Reconstruction time per codec (encode + decode for kvtc). */
  codecSeconds: Record<string, number>;
  perplexitySeconds: number;
}

export interface EvaluateResult {
  model: { name: string; dir: string; fingerprint: string; maxPositions: number; kvDtype: KvCache['dtype'] };
  settings: {
    subjects: string[];
    limit?: number;
    shots: number;
    codecs: { name: string; sink: number; window: number }[];
    seed: number;
    perplexityTokens: number;
  };
  questions: QuestionRecord[];
  summary: EvaluateSummary;
  perplexity?: PerplexityResult;
  longContext?: LongContextResult;
  timing: EvaluateTiming;
  /** Set when the run was interrupted: how many of the planned questions were scored. */
  partial?: { questionsScored: number; questionsPlanned: number };
}

interface SubjectData {
  subject: string;
  questions: MmluQuestion[];
  shots: MmluQuestion[];
}

const now = () => performance.now() / 1000;

export interface ScoringTiming {
  prefillSeconds: number;
  scoringSeconds: number;
  /** Reconstruction time per codec. */
  codecSeconds: Record<string, number>;
}

/**
 * Scores one multiple-choice request (its continuations) with the uncompressed cache and with
 * every codec's reconstruction of that same cache; `gold` is the index of the right continuation.
 */
export async function scoreRequest(
  runner: ModelRunner,
  codecs: readonly CacheCodec[],
  req: EncodedRequest,
  id: { subject: string; index: number; gold: number },
  timing: ScoringTiming,
): Promise<QuestionRecord> {
  const n = req.continuations.length;
  const base = new Array<number>(n);
  const outcomes: Record<string, CodecOutcome> = {};
  for (const c of codecs) outcomes[c.name] = { logLik: new Array<number>(n), pred: 0, compressedTokens: 0, bytes: 0, compressedBytes: 0 };
  let promptTokens = 0;
  let cacheTokens = 0;
  // Usually one context; a truncated prompt may need one per continuation length.
  for (const group of req.contexts) {
    const ctx = group.tokens;
    const conts = group.members.map((i) => req.continuations[i]);
    const plan = planScoring(ctx[ctx.length - 1], conts);
    const put = (into: number[], scores: ArrayLike<number>) => group.members.forEach((i, k) => (into[i] = scores[k]));
    let t = now();
    const past = ctx.length > 1 ? (await runner.prefill(ctx.slice(0, -1))).cache : null;
    timing.prefillSeconds += now() - t;
    t = now();
    const scores = await scoreContinuations(runner, past, conts, plan);
    timing.scoringSeconds += now() - t;
    put(base, scores);
    promptTokens += ctx.length;
    cacheTokens += past?.tokens ?? 0;
    for (const codec of codecs) {
      const out = outcomes[codec.name];
      // A one-token context leaves no cache to compress: the codec sees exactly the baseline.
      if (!past) {
        put(out.logLik, scores);
        continue;
      }
      t = now();
      const rec = await codec.apply(past);
      timing.codecSeconds[codec.name] += now() - t;
      t = now();
      put(out.logLik, await scoreContinuations(runner, rec.cache, conts, plan));
      timing.scoringSeconds += now() - t;
      out.compressedTokens += rec.compressedTokens;
      out.bytes += rec.bytes;
      out.compressedBytes += rec.compressedBytes;
    }
  }
  for (const out of Object.values(outcomes)) out.pred = argmax(out.logLik);
  return {
    ...id,
    promptTokens,
    truncated: Math.max(...req.contexts.map((g) => g.truncated)),
    cacheTokens,
    baseline: { logLik: base, pred: argmax(base) },
    codecs: outcomes,
  };
}

/** Runs the paired MMLU evaluation (and perplexity) for the given codecs. */
export async function runEvaluation(opts: EvaluateOptions): Promise<EvaluateResult> {
  const { runner, codecs, shots } = opts;
  const model = runner.model;
  const dir = opts.mmluDir ?? MMLU_DIR;
  const seed = opts.seed ?? 0;
  const progress = opts.onProgress ?? (() => {});
  const t0 = now();

  // Load every subject (and its shots) before the first forward pass, so bad data fails fast.
  const data: SubjectData[] = [];
  for (const subject of opts.subjects) {
    const all = await loadSubject(dir, subject, 'test');
    data.push({
      subject,
      questions: opts.limit === undefined ? all : all.slice(0, opts.limit),
      shots: await loadShots(dir, subject, shots),
    });
  }
  const total = data.reduce((s, d) => s + d.questions.length, 0);

  const records: QuestionRecord[] = [];
  const timing: ScoringTiming = { prefillSeconds: 0, scoringSeconds: 0, codecSeconds: Object.fromEntries(codecs.map((c) => [c.name, 0])) };
  const tMmlu = now();
  progress({ stage: 'MMLU', done: 0, total, unit: 'q' });
  const interrupted = () => opts.signal?.aborted === true;
  scoring: for (const { subject, questions, shots: examples } of data) {
    for (let index = 0; index < questions.length; index++) {
      if (interrupted()) break scoring;
      const q = questions[index];
      const req = encodeRequest(model.tokenizer, buildPrompt(subject, q, examples), CONTINUATIONS, model.spec.maxPositions);
      records.push(await scoreRequest(runner, codecs, req, { subject, index, gold: q.answer }, timing));
      progress({ stage: 'MMLU', done: records.length, total, unit: 'q', detail: subject.replaceAll('_', ' ') });
    }
  }
  const mmluSeconds = now() - tMmlu;
  if (interrupted() && records.length === 0) {
    throw new InterruptedError('interrupted before the first question was scored: nothing to report');
  }

  let longContext: LongContextResult | undefined;
  const bytesPerToken = fp16BytesPerToken(model.spec);
  if (opts.longContext && opts.longContext.perKind > 0 && !interrupted()) {
    const filler = fillerSentences(await readWikitext(opts.wikitextPath ?? WIKITEXT_TEST));
    const tasks = buildLongContextTasks(model.tokenizer, filler, { ...opts.longContext, maxPositions: model.spec.maxPositions, seed });
    const lc: QuestionRecord[] = [];
    progress({ stage: 'long-context tasks', done: 0, total: tasks.length, unit: 'tasks' });
    for (const task of tasks) {
      if (interrupted()) break;
      lc.push(await scoreRequest(runner, codecs, task.request, { subject: task.kind, index: task.index, gold: task.gold }, timing));
      progress({ stage: 'long-context tasks', done: lc.length, total: tasks.length, unit: 'tasks', detail: task.kind.replace('_', ' ') });
    }
    if (lc.length > 0) {
      const s = summarize(
        lc,
        codecs.map((c) => c.name),
        { seed, bytesPerToken },
      );
      longContext = {
        tasks: Object.fromEntries(LONG_CONTEXT_KINDS.map((k) => [k, lc.filter((r) => r.subject === k).length])),
        context_tokens: lc.reduce((a, r) => a + r.promptTokens, 0) / lc.length,
        overall: s.overall,
        kinds: s.subjects,
        questions: lc,
      };
    }
  }

  let perplexity: PerplexityResult | undefined;
  const tPpl = now();
  if (opts.perplexityTokens > 0 && !interrupted()) {
    const source = opts.perplexityTextPath ?? opts.wikitextPath ?? WIKITEXT_TEST;
    const text = opts.perplexityTextPath ? (await readTextFile(opts.perplexityTextPath)).text : await readWikitext(source);
    perplexity = {
      ...(await evaluatePerplexity(runner, text, codecs, { tokens: opts.perplexityTokens, onProgress: progress })),
      source: basename(source),
    };
  }
  const perplexitySeconds = now() - tPpl;

  const codecNames = codecs.map((c) => c.name);
  return {
    model: {
      name: model.name,
      dir: model.dir,
      fingerprint: model.fingerprint.id,
      maxPositions: model.spec.maxPositions,
      kvDtype: model.spec.kvDtype,
    },
    settings: {
      subjects: [...opts.subjects],
      limit: opts.limit,
      shots,
      codecs: codecs.map((c) => ({ name: c.name, sink: c.sink, window: c.window })),
      seed,
      perplexityTokens: opts.perplexityTokens,
    },
    questions: records,
    summary: summarize(records, codecNames, { seed, bytesPerToken }),
    perplexity,
    longContext,
    timing: {
      seconds: now() - t0,
      mmluSeconds,
      questionsPerSecond: records.length / mmluSeconds,
      prefillSeconds: timing.prefillSeconds,
      scoringSeconds: timing.scoringSeconds,
      codecSeconds: timing.codecSeconds,
      perplexitySeconds,
    },
    ...(records.length < total ? { partial: { questionsScored: records.length, questionsPlanned: total } } : {}),
  };
}

async function readWikitext(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (cause) {
    throw new KvtcError('DATA_INVALID', `WikiText-2 test text not found: ${path}`, {
      cause,
      context: { file: path },
      fix: 'Restore data/wikitext-2/wiki.test.raw from the repository, or pass --perplexity-tokens 0 to skip perplexity.',
    });
  }
}

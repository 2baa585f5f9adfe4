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
import { combinePerplexity, planPerplexity, scorePerplexityWindow, type PerplexityResult } from './perplexity.js';
import { buildPrompt, CONTINUATIONS, loadShots } from './prompt.js';
import { summarize, type EvaluateSummary, type ScopeSummary } from './summary.js';
import type { CodecOutcome, PerplexityWindow, QuestionRecord } from './records.js';
import type { ItemTiming, JournalEntry, JournalSink } from './journal.js';
import type { CacheCodec } from './cache-codec.js';
import { buildLongContextTasks, fillerSentences, LONG_CONTEXT_KINDS, longContextKey } from './longcontext.js';
import { encodeRequest, planScoring, scoreContinuations, type EncodedRequest } from './scoring.js';
import { argmax } from './stats.js';
import { passTokens } from './memory.js';

export interface EvaluateOptions {
  runner: ModelRunner;
  subjects: readonly string[];
  /** Questions per subject (first N of the test split); all when undefined. */
  limit?: number;
  shots: number;
  codecs: readonly CacheCodec[];
  /** WikiText-2 test tokens for perplexity; 0 skips it. */
  perplexityTokens: number;
  /** Tokens per perplexity window; default the model's context, capped by the text. */
  perplexityWindow?: number;
  seed?: number;
  mmluDir?: string;
  /** Filler for the long-context tasks, and the perplexity text unless perplexityTextPath is given. */
  wikitextPath?: string;
  /** Text for the perplexity proxy (default WikiText-2 test). */
  perplexityTextPath?: string;
  onProgress?: ProgressFn;
  /**
   * Ctrl-C: stop at the next codec boundary (the item in flight is dropped, and redone on resume)
   * and return what was scored, marked partial. Aborting before the first item is scored throws
   * INTERRUPTED.
   */
  signal?: AbortSignal;
  /**
   * Items already scored by an earlier run of the same configuration are taken from here instead
   * of being scored again; each newly scored item is appended as soon as it is done.
   */
  journal?: JournalSink;
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
    /** Set only when asked for (--perplexity-window): absent means the model's context, capped by the text. */
    perplexityWindow?: number;
  };
  questions: QuestionRecord[];
  summary: EvaluateSummary;
  perplexity?: PerplexityResult;
  longContext?: LongContextResult;
  timing: EvaluateTiming;
  /**
   * Set when the run was interrupted: how many of the planned questions were scored (and, when
   * the interruption came later, how many long-context tasks and perplexity windows).
   */
  partial?: {
    questionsScored: number;
    questionsPlanned: number;
    longContextScored?: number;
    longContextPlanned?: number;
    perplexityWindowsScored?: number;
    perplexityWindowsPlanned?: number;
  };
  /** Items taken from the journal of an earlier run instead of being scored again. */
  resumed?: number;
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

/** Thrown by scoreRequest when the signal aborts midway: the item is dropped, not half-recorded. */
class ItemAborted extends Error {}

/**
 * Scores one multiple-choice request (its continuations) with the uncompressed cache and with
 * every codec's reconstruction of that same cache; `gold` is the index of the right continuation.
 * Memory: the uncompressed cache and one reconstruction are alive at a time (each codec's
 * reconstruction is scored, then dropped, before the next codec runs).
 */
export async function scoreRequest(
  runner: ModelRunner,
  codecs: readonly CacheCodec[],
  req: EncodedRequest,
  id: { subject: string; index: number; gold: number },
  timing: ScoringTiming,
  signal?: AbortSignal,
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
    const past = ctx.length > 1 ? (await runner.prefill(ctx.slice(0, -1), { chunk: passTokens(runner.spec.vocabSize) })).cache : null;
    timing.prefillSeconds += now() - t;
    t = now();
    const scores = await scoreContinuations(runner, past, conts, plan);
    timing.scoringSeconds += now() - t;
    put(base, scores);
    promptTokens += ctx.length;
    cacheTokens += past?.tokens ?? 0;
    for (const codec of codecs) {
      if (signal?.aborted) throw new ItemAborted();
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

/** Adds one item's seconds (from the journal or just measured) to the run's totals. */
function addTiming(into: ScoringTiming, t: ItemTiming): void {
  into.prefillSeconds += t.prefill;
  into.scoringSeconds += t.scoring;
  for (const [k, v] of Object.entries(t.codecs)) into.codecSeconds[k] = (into.codecSeconds[k] ?? 0) + v;
}

/**
 * Runs `score` for one item unless the journal has it; returns its seconds too. Null when the
 * signal aborted midway (the item is not recorded).
 */
async function journaled<T>(
  journal: JournalSink | undefined,
  key: string,
  kind: 'mmlu' | 'long_context' | 'perplexity',
  score: (timing: ScoringTiming) => Promise<T | null>,
  codecNames: readonly string[],
  /** An older key of the same item, looked up when `key` is absent (journals of earlier builds). */
  legacyKey?: { key: string; matches: (e: JournalEntry) => boolean },
): Promise<{ value: T; seconds: ItemTiming; resumed: boolean } | null> {
  let done = journal?.get(key);
  if (!done && legacyKey) {
    const old = journal?.get(legacyKey.key);
    if (old && legacyKey.matches(old)) done = old;
  }
  if (done) {
    if (done.kind !== kind) throw new KvtcError('INTERNAL', `journal entry ${key} is a ${done.kind} entry, expected ${kind}`);
    return { value: (done.kind === 'perplexity' ? done.window : done.record) as T, seconds: done.seconds, resumed: true };
  }
  const timing: ScoringTiming = { prefillSeconds: 0, scoringSeconds: 0, codecSeconds: Object.fromEntries(codecNames.map((c) => [c, 0])) };
  const t = now();
  let value: T | null;
  try {
    value = await score(timing);
  } catch (e) {
    if (e instanceof ItemAborted) return null;
    throw e;
  }
  if (value === null) return null;
  const seconds: ItemTiming = {
    wall: now() - t,
    prefill: timing.prefillSeconds,
    scoring: timing.scoringSeconds,
    codecs: timing.codecSeconds,
  };
  if (journal) {
    journal.append(
      kind === 'perplexity'
        ? { kind, key, window: value as PerplexityWindow, seconds }
        : { kind, key, record: value as QuestionRecord, seconds },
    );
  }
  return { value, seconds, resumed: false };
}

/** Runs the paired MMLU evaluation (and perplexity) for the given codecs. */
export async function runEvaluation(opts: EvaluateOptions): Promise<EvaluateResult> {
  const { runner, codecs, shots, journal } = opts;
  const model = runner.model;
  const dir = opts.mmluDir ?? MMLU_DIR;
  const seed = opts.seed ?? 0;
  const progress = opts.onProgress ?? (() => {});
  const t0 = now();
  const codecNames = codecs.map((c) => c.name);

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
  const timing: ScoringTiming = { prefillSeconds: 0, scoringSeconds: 0, codecSeconds: Object.fromEntries(codecNames.map((c) => [c, 0])) };
  // Seconds of items scored by an earlier run (read from the journal), added to this run's own.
  let resumedSeconds = 0;
  let resumed = 0;
  let mmluSeconds = 0;
  const interrupted = () => opts.signal?.aborted === true;
  const take = <T>(item: { value: T; seconds: ItemTiming; resumed: boolean }) => {
    addTiming(timing, item.seconds);
    if (item.resumed) {
      resumed++;
      resumedSeconds += item.seconds.wall;
    }
    return item.value;
  };
  progress({ stage: 'MMLU', done: 0, total, unit: 'q' });
  // Items of each stage taken from the journal, so progress rates count only this run's work.
  let stageResumed = resumed;
  // Round robin over the subjects (question 0 of every subject, then question 1, …), so a run
  // stopped at a time limit has scored every subject about equally instead of the first
  // subjects whole: "every subject, as many questions as an hour allows" is one command.
  const rounds = data.reduce((m, d) => Math.max(m, d.questions.length), 0);
  scoring: for (let index = 0; index < rounds; index++) {
    for (const { subject, questions, shots: examples } of data) {
      if (index >= questions.length) continue;
      if (interrupted()) break scoring;
      const q = questions[index];
      const item = await journaled(
        journal,
        `mmlu/${subject}/${index}`,
        'mmlu',
        (t) => {
          const req = encodeRequest(model.tokenizer, buildPrompt(subject, q, examples), CONTINUATIONS, model.spec.maxPositions);
          return scoreRequest(runner, codecs, req, { subject, index, gold: q.answer }, t, opts.signal);
        },
        codecNames,
      );
      if (!item) break scoring;
      mmluSeconds += item.seconds.wall;
      records.push(take(item));
      progress({
        stage: 'MMLU',
        done: records.length,
        total,
        unit: 'q',
        detail: subject.replaceAll('_', ' '),
        resumed: resumed - stageResumed,
      });
    }
  }
  if (interrupted() && records.length === 0 && total > 0 && resumed === 0) {
    throw new InterruptedError('interrupted before the first question was scored: nothing to report');
  }

  let longContext: LongContextResult | undefined;
  let lcPlanned = 0;
  let lcScored = 0;
  const bytesPerToken = fp16BytesPerToken(model.spec);
  if (opts.longContext && opts.longContext.perKind > 0 && !interrupted()) {
    const filler = fillerSentences(await readWikitext(opts.wikitextPath ?? WIKITEXT_TEST));
    const tasks = buildLongContextTasks(model.tokenizer, filler, { ...opts.longContext, maxPositions: model.spec.maxPositions, seed });
    lcPlanned = tasks.length;
    const lc: QuestionRecord[] = [];
    progress({ stage: 'long-context tasks', done: 0, total: tasks.length, unit: 'tasks' });
    stageResumed = resumed;
    for (const task of tasks) {
      if (interrupted()) break;
      const item = await journaled(
        journal,
        longContextKey(task),
        'long_context',
        (t) => scoreRequest(runner, codecs, task.request, { subject: task.kind, index: task.index, gold: task.gold }, t, opts.signal),
        codecNames,
        // Builds before 2026-12-07 scored the kinds one after the other and keyed tasks by that place.
        {
          key: `long_context/${LONG_CONTEXT_KINDS.indexOf(task.kind) * opts.longContext.perKind + task.index}`,
          matches: (e) => e.kind === 'long_context' && e.record.subject === task.kind && e.record.index === task.index,
        },
      );
      if (!item) break;
      lc.push(take(item));
      progress({
        stage: 'long-context tasks',
        done: lc.length,
        total: tasks.length,
        unit: 'tasks',
        detail: task.kind.replace('_', ' '),
        resumed: resumed - stageResumed,
      });
    }
    lcScored = lc.length;
    if (lc.length > 0) {
      const s = summarize(lc, codecNames, { seed, bytesPerToken });
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
  let pplPlanned = 0;
  let pplScored = 0;
  let perplexitySeconds = 0;
  if (opts.perplexityTokens > 0 && !interrupted()) {
    const source = opts.perplexityTextPath ?? opts.wikitextPath ?? WIKITEXT_TEST;
    const text = opts.perplexityTextPath ? (await readTextFile(opts.perplexityTextPath)).text : await readWikitext(source);
    const plan = planPerplexity(runner, text, { tokens: opts.perplexityTokens, window: opts.perplexityWindow });
    pplPlanned = plan.windows;
    const windows: PerplexityWindow[] = [];
    stageResumed = resumed;
    for (let w = 0; w < plan.windows; w++) {
      if (interrupted()) break;
      const item = await journaled(
        journal,
        `perplexity/${w}`,
        'perplexity',
        () => scorePerplexityWindow(runner, codecs, plan, w, undefined, opts.signal),
        codecNames,
      );
      if (!item) break;
      perplexitySeconds += item.seconds.wall;
      if (item.resumed) {
        resumed++;
        resumedSeconds += item.seconds.wall;
      }
      windows.push(item.value);
      progress({ stage: 'perplexity', done: w + 1, total: plan.windows, unit: 'window', resumed: resumed - stageResumed });
    }
    pplScored = windows.length;
    // A partial perplexity would be a different measurement from the one asked for: reported only whole.
    if (windows.length === plan.windows)
      perplexity = { ...combinePerplexity(plan, windows, codecNames, { seed }), source: basename(source) };
  }

  const incomplete =
    records.length < total || lcScored < lcPlanned || pplScored < pplPlanned || (interrupted() && !perplexity && opts.perplexityTokens > 0);
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
      ...(opts.perplexityWindow !== undefined ? { perplexityWindow: opts.perplexityWindow } : {}),
    },
    questions: records,
    summary: summarize(records, codecNames, { seed, bytesPerToken }),
    perplexity,
    longContext,
    timing: {
      seconds: now() - t0 + resumedSeconds,
      mmluSeconds,
      questionsPerSecond: records.length / mmluSeconds,
      prefillSeconds: timing.prefillSeconds,
      scoringSeconds: timing.scoringSeconds,
      codecSeconds: timing.codecSeconds,
      perplexitySeconds,
    },
    ...(incomplete
      ? {
          partial: {
            questionsScored: records.length,
            questionsPlanned: total,
            ...(lcPlanned > 0 ? { longContextScored: lcScored, longContextPlanned: lcPlanned } : {}),
            ...(pplPlanned > 0 ? { perplexityWindowsScored: pplScored, perplexityWindowsPlanned: pplPlanned } : {}),
          },
        }
      : {}),
    ...(journal ? { resumed } : {}),
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

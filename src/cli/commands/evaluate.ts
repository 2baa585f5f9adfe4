import { fmtRate } from '../../progress.js';
import { rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { z } from 'zod';
import { KvtcError, UsageError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { asIoError, checkOutputFile } from '../../io/output.js';
import type { Profile } from '../../profile/read.js';
import {
  CODEC_HEADER,
  codecRows,
  notes,
  partialSummary,
  sampleLines,
  PERPLEXITY_HEADER,
  perplexityIntervalNote,
  perplexityRows,
  renderMarkdown,
  scopeTable,
  settingsRecord,
  withCi,
} from '../../evaluate/report.js';
import { CODEC_NAMES, isKvtcCodec, sweepNames, type CodecName } from '../../evaluate/codecs.js';
import { checkEvaluateOptions, evaluate, type ModelEvaluation } from '../../evaluate/evaluate.js';
import type { EvaluateResult } from '../../evaluate/run.js';
import { renderSweepSvg, sweepRows } from '../../evaluate/sweep.js';
import { parseOptions } from '../../validation.js';
import { VERSION } from '../../version.js';
import { fmtSeconds, table } from '../format.js';
import type { CliIO } from '../io.js';
import { onInterrupt } from '../interrupt.js';
import { createProgress } from '../progress.js';
import { printJson } from '../json.js';
import { wholeNumber, decimal, deviceSchema } from '../options.js';

const schema = z.object({
  profile: z.array(z.string().min(1)).optional(),
  plot: z.string().min(1).optional(),
  dynamoProfile: z.string().min(1).optional(),
  model: z.string().min(1).optional(),
  onnx: z.string().min(1).optional(),
  subjects: z.array(z.string()).optional(),
  limit: wholeNumber(1).optional(),
  shots: wholeNumber(0),
  codec: z
    .array(z.string())
    .optional()
    .superRefine((list, ctx) => {
      for (const c of list ?? []) {
        if (!(CODEC_NAMES as readonly string[]).includes(c))
          ctx.addIssue({ code: 'custom', message: `unknown codec "${c}"; valid: ${CODEC_NAMES.join(', ')}` });
      }
    })
    .transform((list) => (list ? ([...new Set(list)] as CodecName[]) : undefined)),
  perplexityTokens: wholeNumber(0),
  perplexityText: z.string().min(1).optional(),
  perplexityWindow: wholeNumber(64).optional(),
  longContext: wholeNumber(0, 10_000),
  longContextTokens: wholeNumber(64).optional(),
  logSamples: z.string().min(1).optional(),
  _commandLine: z.string().optional(),
  maxDrop: decimal(0, 100).optional(),
  report: z.string().min(1).optional(),
  // A path, false for --no-journal, undefined for the default (beside the report).
  journal: z.union([z.string().min(1), z.literal(false)]).optional(),
  fresh: z.boolean().default(false),
  seed: wholeNumber(0),
  device: deviceSchema,
  json: z.boolean(),
  quiet: z.boolean().default(false),
});

function jsonResult(r: EvaluateResult, profiles: readonly Profile[], extra: Record<string, unknown>) {
  const o = r.summary.overall;
  const names = r.settings.codecs.map((c) => c.name);
  const main = names.find(isKvtcCodec) ?? names[0];
  const profile = profiles[0];
  const c = main ? o.codecs[main] : undefined;
  return {
    model: r.model,
    profile: profile
      ? { dir: profile.dir, profile_id: profile.manifest.profile_id, ratio_target: profile.manifest.settings.ratio_target }
      : null,
    profiles: profiles.map((p, i) => ({
      codec: sweepNames(profiles)[i],
      dir: p.dir,
      profile_id: p.manifest.profile_id,
      ratio_target: p.manifest.settings.ratio_target,
    })),
    n: o.n,
    subjects_count: o.subjects,
    shots: r.settings.shots,
    settings: settingsRecord(r.settings),
    baseline: o.baseline,
    compressed: c ? { codec: main, ...c.accuracy } : null,
    delta_points: c?.delta_points ?? null,
    delta_ci95: c?.delta_ci95 ?? null,
    agreement: c?.agreement ?? null,
    agreement_ci95: c?.agreement_ci95 ?? null,
    kl: c?.kl ?? null,
    kl_ci95: c?.kl_ci95 ?? null,
    ratio: c?.ratio ?? null,
    ratio_compressed: c?.ratio_compressed ?? null,
    compressed_share: c?.compressed_share ?? null,
    uncompressed_questions: c?.uncompressed_questions ?? null,
    truncated_questions: o.truncated_questions,
    // The key `recent` is --json's name for the protected window (settingsRecord).
    codecs: Object.fromEntries(r.settings.codecs.map((s) => [s.name, { sink: s.sink, recent: s.window, ...o.codecs[s.name] }])),
    groups: r.summary.groups,
    subjects: r.summary.subjects,
    perplexity: r.perplexity ?? null,
    long_context: r.longContext
      ? {
          tasks: r.longContext.tasks,
          context_tokens: r.longContext.context_tokens,
          overall: r.longContext.overall,
          kinds: r.longContext.kinds,
        }
      : null,
    questions_per_second: r.timing.questionsPerSecond,
    timing: r.timing,
    partial: r.partial ?? null,
    sweep: sweepRows(r),
    ...extra,
  };
}

function printTables(io: CliIO, r: EvaluateResult, profiles: readonly Profile[], profileNote: string | undefined): void {
  const o = r.summary.overall;
  const profile = profiles[0];
  const names = r.settings.codecs.map((c) => c.name);
  io.out(
    `kvtc evaluate · ${r.model.name} · ${profiles.length > 1 ? `${profiles.length} profiles (${sweepNames(profiles).join(', ')})` : profile ? `profile ${profile.dir} (${profile.manifest.profile_id})` : 'no profile'}`,
  );
  io.out(
    `MMLU ${r.settings.shots}-shot · ${o.n} questions · ${o.subjects} subject(s) · lm-evaluation-harness prompt and log-likelihood scoring`,
  );
  if (profileNote) io.out(profileNote);
  if (r.partial) io.out(`PARTIAL: ${partialSummary(r.partial)}; the figures below cover only what was scored.`);
  io.out('');
  io.out(table(CODEC_HEADER, codecRows(o)));
  io.out('');
  io.out(
    'Δ: codec − uncompressed accuracy on the same questions, paired bootstrap 95% CI. ratio: fp16 bytes of the cache ÷ stored bytes (protected tokens included).',
  );
  for (const n of notes(r)) io.out(`note: ${n}`);
  if (Object.keys(r.summary.groups).length > 1) {
    const t = scopeTable(r.summary.groups, names, 'group');
    io.out('');
    io.out(table(t.header, t.rows));
  }
  if (o.subjects > 1) {
    const t = scopeTable(r.summary.subjects, names, 'subject');
    io.out('');
    io.out(table(t.header, t.rows));
  }
  if (r.longContext) {
    const lc = r.longContext;
    io.out('');
    io.out(
      `Long-context tasks (RULER-style needle and variable tracking, generated): ${Object.entries(lc.tasks)
        .map(([k, n]) => `${n} ${k.replace('_', ' ')}`)
        .join(', ')}, ${lc.context_tokens.toFixed(0)} tokens on average`,
    );
    io.out(table(CODEC_HEADER, codecRows(lc.overall)));
  }
  if (profiles.length > 1) {
    const f = (x: number | null, d = 1) => (x === null || !Number.isFinite(x) ? 'n/a' : `${x > 0 ? '+' : ''}${x.toFixed(d)}`);
    io.out('');
    io.out('Ratio sweep (all against the same uncompressed run; ratio measured on these caches):');
    io.out(
      table(
        [
          'codec',
          'ratio (compr. tokens)',
          'MMLU Δ [95% CI]',
          'agree [95% CI]',
          'KL [95% CI]',
          'long-context Δ [95% CI]',
          'Δ perplexity [95% CI]',
        ],
        sweepRows(r).map((x) => [
          x.codec,
          Number.isFinite(x.ratio_compressed) ? `${x.ratio_compressed.toFixed(2)}x` : 'n/a',
          `${f(x.delta_points)} [${f(x.delta_ci95[0])}, ${f(x.delta_ci95[1])}]`,
          withCi(x.agreement, x.agreement_ci95, (v) => `${(100 * v).toFixed(1)}%`),
          withCi(x.kl, x.kl_ci95, (v) => v.toExponential(2)),
          x.long_context_delta_points === null
            ? 'n/a'
            : `${f(x.long_context_delta_points)} [${f(x.long_context_ci95![0])}, ${f(x.long_context_ci95![1])}]`,
          x.perplexity_delta === null ? 'n/a' : withCi(x.perplexity_delta, x.perplexity_delta_ci95, (v) => f(v, 3)),
        ]),
      ),
    );
  }
  if (r.perplexity) {
    const p = r.perplexity;
    io.out('');
    io.out(
      `Perplexity, ${p.source ?? 'WikiText-2 test'}: ${p.windows} window(s) of ${p.window} tokens; first ${p.context} prefilled and compressed, ${p.scored_tokens} tokens scored in all`,
    );
    io.out(table(PERPLEXITY_HEADER, perplexityRows(r)));
    io.out(perplexityIntervalNote(p));
  }
  const t = r.timing;
  const codecTimes = Object.entries(t.codecSeconds)
    .map(([k, v]) => `${k} ${fmtSeconds(v)}`)
    .join(', ');
  io.out('');
  io.out(
    `${o.n} questions in ${fmtSeconds(t.mmluSeconds)}: ${fmtRate(t.questionsPerSecond, 'questions')} (prefill ${fmtSeconds(t.prefillSeconds)}, scoring ${fmtSeconds(t.scoringSeconds)}${codecTimes ? `, codecs: ${codecTimes}` : ''})`,
  );
}

/**
 * Where the journal goes: --journal, else beside the first output file asked for (a run that
 * writes nothing keeps no journal unless asked), never with --no-journal.
 */
export function journalPath(opts: { journal?: string | false; report?: string; logSamples?: string; plot?: string }): string | undefined {
  if (opts.journal === false) return undefined;
  if (opts.journal) return opts.journal;
  const beside = opts.report ?? opts.logSamples ?? opts.plot;
  return beside ? `${beside}.journal.jsonl` : undefined;
}

export default async function evaluateCommand(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(schema, raw);
  const journal = journalPath(opts);
  if (journal) {
    checkOutputFile(journal, { force: true, option: '--journal' });
    const clash = (['report', 'logSamples', 'plot'] as const).find((k) => opts[k] && resolve(opts[k]) === resolve(journal));
    if (clash)
      throw new UsageError(
        `--journal ${journal} is also the ${clash === 'logSamples' ? '--log-samples' : `--${clash}`} file`,
        'Give the journal a path of its own (or leave --journal out: it then goes beside the report).',
        { journal },
      );
  }
  // Subjects, shots and device are checked before anything is loaded: a typo costs nothing.
  checkEvaluateOptions({ device: opts.device, subjects: opts.subjects, shots: opts.shots });
  // The report path is checked before hours of scoring, not after.
  if (opts.report) checkOutputFile(opts.report, { force: true, option: '--report' });
  if (opts.logSamples) checkOutputFile(opts.logSamples, { force: true, option: '--log-samples' });
  if (opts.plot) checkOutputFile(opts.plot, { force: true, option: '--plot' });
  const startedAt = new Date().toISOString();
  const progress = createProgress(io, { quiet: opts.quiet });
  const interrupt = onInterrupt(
    io,
    `interrupted: stopping now; the items scored so far will be reported, marked partial${journal ? `, and are kept in ${journal} (run the same command again to resume)` : ''}… (Ctrl-C again to quit at once)`,
  );
  // SIGTERM (a scheduler's stop, \`kill\`) ends the run the same way as the first Ctrl-C.
  const term = new AbortController();
  const onTerm = () => {
    process.off('SIGTERM', onTerm);
    io.err(
      `\nterminated: stopping now${journal ? `; the items scored so far are kept in ${journal} (run the same command again to resume)` : ''}…`,
    );
    term.abort();
  };
  process.on('SIGTERM', onTerm);
  const signal = AbortSignal.any([interrupt.signal, term.signal]);
  let evaluation: ModelEvaluation;
  try {
    evaluation = await evaluate({
      model: opts.model,
      onnx: opts.onnx,
      profiles: opts.profile,
      dynamoProfile: opts.dynamoProfile,
      subjects: opts.subjects,
      limit: opts.limit,
      shots: opts.shots,
      codecs: opts.codec,
      perplexityTokens: opts.perplexityTokens,
      perplexityText: opts.perplexityText,
      perplexityWindow: opts.perplexityWindow,
      longContext: opts.longContext,
      longContextTokens: opts.longContextTokens,
      seed: opts.seed,
      device: opts.device,
      maxDrop: opts.maxDrop,
      onProgress: progress.fn,
      signal,
      journal,
      fresh: opts.fresh,
    });
  } finally {
    interrupt.dispose();
    process.off('SIGTERM', onTerm);
    progress.stop();
  }
  const { result, profiles, profileNote, maxDrop, failure } = evaluation;
  if (evaluation.journal && !opts.quiet) {
    const j = evaluation.journal;
    if (j.resumed > 0) io.err(`resumed from ${j.path}: ${j.resumed} item(s) taken from an earlier run of the same command`);
    if (j.droppedPartialLine)
      io.err(`note: the last line of ${j.path} was cut short (a run killed while writing); that item was scored again`);
  }
  const json = jsonResult(result, profiles, maxDrop ? { max_drop: maxDrop } : {});
  // Results reach the user before the report is written: a failing write loses nothing.
  let reportError: unknown;
  const report = async () => {
    try {
      if (opts.plot)
        await writeFileAtomic(
          opts.plot,
          renderSweepSvg(sweepRows(result), {
            title: `kvtc evaluate · ${result.model.name} · ${result.summary.overall.n} MMLU questions${result.longContext ? ` + ${result.longContext.overall.n} long-context tasks` : ''}`,
            subtitle: `${opts._commandLine ?? ''} · kvtc ${VERSION} · ${startedAt}`,
            perplexitySource: result.perplexity?.source,
          }),
        );
      if (opts.logSamples)
        await writeFileAtomic(opts.logSamples, sampleLines(result, { version: VERSION, date: startedAt, command: opts._commandLine }));
      if (opts.report)
        await writeFileAtomic(
          opts.report,
          renderMarkdown(result, {
            profile: profiles.map((p) => p.dir).join(', ') || undefined,
            command: opts._commandLine,
            version: VERSION,
            date: startedAt,
          }),
        );
    } catch (e) {
      reportError = e;
      return;
    }
    // A complete run whose outputs are written has no use for the journal kvtc chose beside them:
    // removed, so a later run with other settings and the same --report starts clean. Kept when
    // anything is missing, and always when named with --journal (the user asked for that file).
    if (evaluation.journal && !result.partial && !opts.journal) await rm(evaluation.journal.path, { force: true });
  };
  if (opts.json) {
    // One JSON document on stdout either way: on failure the result rides in the error.
    await report();
    if (failure) {
      throw new KvtcError(failure.code, failure.message, {
        fix: failure.fix,
        context: { ...failure.context, ...(reportError ? { report_error: String((reportError as Error).message) } : {}) },
        result: json,
      });
    }
    if (reportError) {
      const e =
        asIoError(reportError) ??
        new KvtcError('IO_ERROR', `the report could not be written to ${opts.report}: ${(reportError as Error).message}`);
      throw new KvtcError(e.code, e.message, { fix: e.fix, context: e.context, result: json });
    }
    printJson(io, json);
    return;
  }
  printTables(io, result, profiles, profileNote);
  await report();
  if (reportError && !failure) throw reportError;
  if (reportError) io.err(`error: the report could not be written to ${opts.report}: ${(reportError as Error).message}`);
  else {
    if (opts.report) io.out(`report written to ${opts.report}`);
    if (opts.plot) io.out(`sweep plot written to ${opts.plot}`);
    if (opts.logSamples) io.out(`per-question records written to ${opts.logSamples}`);
  }
  if (failure) throw failure;
  if (maxDrop)
    io.out(
      `--max-drop ${opts.maxDrop}: passed (${maxDrop.checked ? 'worst: ' : ''}${maxDrop.codec} drop ${maxDrop.drop_points.toFixed(2)} points)`,
    );
}
// Tested by test/evaluate/evaluate-cli.test.ts, test/profile/compat.test.ts, test/dynamo/calibrate-export.test.ts (--dynamo-profile), test/cli/dynamo-profile-mismatch.test.ts and test/cli/interrupt.test.ts.

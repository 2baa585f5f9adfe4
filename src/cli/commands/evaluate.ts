import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { KvtcError, UsageError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { asIoError, checkOutputFile } from '../../io/output.js';
import { loadModel, modelDirFromOption, type LoadedModel } from '../../model/load.js';
import { ModelRunner } from '../../model/runner.js';
import { checkDevice } from '../../onnx/session.js';
import { DEFAULT_PROFILES_DIR } from '../../paths.js';
import { checkProfileForModel } from '../../profile/compat.js';
import { readProfile, type Profile } from '../../profile/io.js';
import { MANIFEST_FILE } from '../../profile/schema.js';
import { CODEC_HEADER, codecRows, notes, sampleLines, PERPLEXITY_HEADER, perplexityRows, renderMarkdown, scopeTable } from '../../evaluate/report.js';
import { CODEC_NAMES, createCodecs, DEFAULT_BASELINES, evaluate, type CodecName, type EvaluateResult } from '../../evaluate/run.js';
import { resolveSubjects } from '../../evaluate/subjects.js';
import { parseOptions } from '../../validation.js';
import { VERSION } from '../../version.js';
import { fmtSeconds, table } from '../format.js';
import type { CliIO } from '../io.js';
import { onInterrupt } from '../interrupt.js';
import { createProgress } from '../progress.js';
import { printJson } from '../json.js';
import { wholeNumber, decimal, deviceSchema } from '../options.js';

/** Long-context prompts fill the model's context up to this many tokens unless --long-context-tokens says otherwise. */
const DEFAULT_LONG_CONTEXT_TOKENS = 4096;

const schema = z.object({
  profile: z.string().min(1).optional(),
  model: z.string().min(1).optional(),
  subjects: z.array(z.string()).optional(),
  limit: wholeNumber(1).optional(),
  shots: wholeNumber(0),
  codec: z
    .array(z.string())
    .optional()
    .superRefine((list, ctx) => {
      for (const c of list ?? []) {
        if (!(CODEC_NAMES as readonly string[]).includes(c)) ctx.addIssue({ code: 'custom', message: `unknown codec "${c}"; valid: ${CODEC_NAMES.join(', ')}` });
      }
    })
    .transform((list) => (list ? ([...new Set(list)] as CodecName[]) : undefined)),
  perplexityTokens: wholeNumber(0),
  longContext: wholeNumber(0, 10_000),
  longContextTokens: wholeNumber(64).optional(),
  logSamples: z.string().min(1).optional(),
  _commandLine: z.string().optional(),
  maxDrop: decimal(0, 100).optional(),
  report: z.string().min(1).optional(),
  seed: wholeNumber(0),
  device: deviceSchema,
  json: z.boolean(),
  quiet: z.boolean().default(false),
});

/** The profile to use: --profile (must exist), else kvtc-profiles/<model> when there is one. */
async function findProfile(option: string | undefined, model: LoadedModel): Promise<Profile | undefined> {
  if (option !== undefined) return readProfile(option);
  const dflt = join(DEFAULT_PROFILES_DIR, model.name);
  return existsSync(join(dflt, MANIFEST_FILE)) ? readProfile(dflt) : undefined;
}

function jsonResult(r: EvaluateResult, profile: Profile | undefined, extra: Record<string, unknown>) {
  const o = r.summary.overall;
  const names = r.settings.codecs.map((c) => c.name);
  const main = names.includes('kvtc') ? 'kvtc' : names[0];
  const c = main ? o.codecs[main] : undefined;
  return {
    model: r.model,
    profile: profile ? { dir: profile.dir, profile_id: profile.manifest.profile_id, ratio_target: profile.manifest.settings.ratio_target } : null,
    n: o.n,
    subjects_count: o.subjects,
    shots: r.settings.shots,
    settings: r.settings,
    baseline: o.baseline,
    compressed: c ? { codec: main, ...c.accuracy } : null,
    delta_points: c?.delta_points ?? null,
    delta_ci95: c?.delta_ci95 ?? null,
    agreement: c?.agreement ?? null,
    kl: c?.kl ?? null,
    ratio: c?.ratio ?? null,
    ratio_compressed: c?.ratio_compressed ?? null,
    compressed_share: c?.compressed_share ?? null,
    uncompressed_questions: c?.uncompressed_questions ?? null,
    truncated_questions: o.truncated_questions,
    codecs: Object.fromEntries(r.settings.codecs.map((s) => [s.name, { sink: s.sink, recent: s.recent, ...o.codecs[s.name] }])),
    groups: r.summary.groups,
    subjects: r.summary.subjects,
    perplexity: r.perplexity ?? null,
    long_context: r.longContext ? { tasks: r.longContext.tasks, context_tokens: r.longContext.context_tokens, overall: r.longContext.overall, kinds: r.longContext.kinds } : null,
    questions_per_second: r.timing.questionsPerSecond,
    timing: r.timing,
    partial: r.partial ?? null,
    ...extra,
  };
}

function printTables(io: CliIO, r: EvaluateResult, profile: Profile | undefined, profileNote: string | undefined): void {
  const o = r.summary.overall;
  const names = r.settings.codecs.map((c) => c.name);
  io.out(`kvtc evaluate · ${r.model.name} · ${profile ? `profile ${profile.dir} (${profile.manifest.profile_id})` : 'no profile'}`);
  io.out(`MMLU ${r.settings.shots}-shot · ${o.n} questions · ${o.subjects} subject(s) · lm-evaluation-harness prompt and log-likelihood scoring`);
  if (profileNote) io.out(profileNote);
  if (r.partial) io.out(`PARTIAL: interrupted after ${r.partial.questionsScored} of ${r.partial.questionsPlanned} questions; the figures below cover only those (perplexity not measured).`);
  io.out('');
  io.out(table(CODEC_HEADER, codecRows(o)));
  io.out('');
  io.out('Δ: codec − uncompressed accuracy on the same questions, paired bootstrap 95% CI. ratio: fp16 bytes of the cache ÷ stored bytes (protected tokens included).');
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
    io.out(`Long-context tasks (RULER-style needle and variable tracking, generated): ${Object.entries(lc.tasks).map(([k, n]) => `${n} ${k.replace('_', ' ')}`).join(', ')}, ${lc.context_tokens.toFixed(0)} tokens on average`);
    io.out(table(CODEC_HEADER, codecRows(lc.overall)));
  }
  if (r.perplexity) {
    const p = r.perplexity;
    io.out('');
    io.out(`Perplexity, WikiText-2 test: ${p.windows} window(s) of ${p.window} tokens; first ${p.context} prefilled and compressed, ${p.scored_tokens} tokens scored in all`);
    io.out(table(PERPLEXITY_HEADER, perplexityRows(r)));
  }
  const t = r.timing;
  const codecTimes = Object.entries(t.codecSeconds).map(([k, v]) => `${k} ${fmtSeconds(v)}`).join(', ');
  io.out('');
  io.out(`${o.n} questions in ${fmtSeconds(t.mmluSeconds)}: ${t.questionsPerSecond.toFixed(1)} questions/s (prefill ${fmtSeconds(t.prefillSeconds)}, scoring ${fmtSeconds(t.scoringSeconds)}${codecTimes ? `, codecs: ${codecTimes}` : ''})`);
}

export default async function evaluateCommand(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(schema, raw);
  checkDevice(opts.device);
  // Subjects are checked before anything is loaded: a typo costs nothing.
  const subjects = resolveSubjects(opts.subjects ?? 'all');
  if (opts.shots > 5) throw new UsageError(`--shots ${opts.shots}: MMLU's dev split has 5 examples per subject`, 'Use --shots 0 (the harness default) or 5.', { value: opts.shots });
  // The report path is checked before hours of scoring, not after.
  if (opts.report) checkOutputFile(opts.report, { force: true, option: '--report' });
  if (opts.logSamples) checkOutputFile(opts.logSamples, { force: true, option: '--log-samples' });
  const startedAt = new Date().toISOString();
  const model = await loadModel(modelDirFromOption(opts.model), { device: opts.device });
  let profile: Profile | undefined;
  let profileNote: string | undefined;
  let codecNames: CodecName[];
  let codecs: Awaited<ReturnType<typeof createCodecs>> = [];
  const progress = createProgress(io, { quiet: opts.quiet });
  const interrupt = onInterrupt(io, 'interrupted: stopping after the current question; the questions scored so far will be reported, marked partial… (Ctrl-C again to quit at once)');
  let result: EvaluateResult;
  // The model's session and every codec (sessions, worker threads) are released on every path.
  try {
    profile = await findProfile(opts.profile, model);
    if (profile) checkProfileForModel(profile, model, 'the model being evaluated');
    codecNames = opts.codec ?? (profile ? ['kvtc', ...DEFAULT_BASELINES] : [...DEFAULT_BASELINES]);
    if (codecNames.includes('kvtc') && !profile) {
      throw new KvtcError('USAGE', `--codec kvtc needs a profile, and there is none for ${model.name} at ${join(DEFAULT_PROFILES_DIR, model.name)}`, {
        fix: `Calibrate one with \`kvtc calibrate --model ${model.dir}\`, or pass --profile DIR.`,
        exitCode: 2,
      });
    }
    if (!profile) profileNote = `no profile at ${join(DEFAULT_PROFILES_DIR, model.name)}: kvtc is not evaluated, only the baselines (run \`kvtc calibrate\` to make one).`;
    codecs = await createCodecs(codecNames, { profile, device: opts.device });
    result = await evaluate({
      runner: new ModelRunner(model),
      subjects,
      limit: opts.limit,
      shots: opts.shots,
      codecs,
      perplexityTokens: opts.perplexityTokens,
      longContext: { perKind: opts.longContext, contextTokens: opts.longContextTokens ?? Math.min(model.spec.maxPositions, DEFAULT_LONG_CONTEXT_TOKENS) },
      seed: opts.seed,
      onProgress: progress.fn,
      signal: interrupt.signal,
    });
  } finally {
    interrupt.dispose();
    progress.stop();
    await Promise.all(codecs.map((c) => c.release()));
    await model.session.release();
  }

  // --max-drop guards kvtc (or, without it, the first codec asked for).
  const guarded = codecNames.includes('kvtc') ? 'kvtc' : codecNames[0];
  let failure: KvtcError | undefined;
  let maxDrop: Record<string, unknown> | undefined;
  if (opts.maxDrop !== undefined) {
    if (!guarded) throw new UsageError('--max-drop needs a codec to check', 'Pass --codec kvtc (or another codec).');
    const c = result.summary.overall.codecs[guarded];
    const drop = -c.delta_points;
    maxDrop = { codec: guarded, threshold_points: opts.maxDrop, drop_points: drop, passed: !(drop > opts.maxDrop) };
    if (drop > opts.maxDrop) {
      failure = new KvtcError(
        'THRESHOLD_EXCEEDED',
        `${guarded} loses ${drop.toFixed(2)} accuracy points on ${c.n} questions (uncompressed ${(100 * result.summary.overall.baseline.accuracy).toFixed(1)}%, ${guarded} ${(100 * c.accuracy.accuracy).toFixed(1)}%; 95% CI of the drop [${(-c.delta_ci95[1]).toFixed(1)}, ${(-c.delta_ci95[0]).toFixed(1)}]), more than --max-drop ${opts.maxDrop}`,
        {
          exitCode: 3,
          fix: guarded === 'kvtc' ? 'Calibrate a profile with a lower --ratio (or more calibration --tokens), then evaluate again.' : 'Choose a less lossy codec or raise --max-drop.',
          context: { codec: guarded, drop_points: drop, threshold_points: opts.maxDrop },
        },
      );
    }
  }
  const json = jsonResult(result, profile, maxDrop ? { max_drop: maxDrop } : {});
  // Results reach the user before the report is written: a failing write loses nothing.
  let reportError: unknown;
  const report = async () => {
    try {
      if (opts.logSamples) await writeFileAtomic(opts.logSamples, sampleLines(result, { version: VERSION, date: startedAt, command: opts._commandLine }));
      if (opts.report) await writeFileAtomic(opts.report, renderMarkdown(result, { profile: profile?.dir, command: opts._commandLine, version: VERSION, date: startedAt }));
    } catch (e) {
      reportError = e;
    }
  };
  if (result.partial && !failure) {
    failure = new KvtcError('INTERRUPTED', `interrupted: ${result.partial.questionsScored} of ${result.partial.questionsPlanned} questions were scored; the results above are partial`, {
      exitCode: 130,
      fix: 'Re-run the command for the full evaluation.',
      context: { questions_scored: result.partial.questionsScored, questions_planned: result.partial.questionsPlanned },
    });
  }
  if (opts.json) {
    // One JSON document on stdout either way: on failure the result rides in the error.
    await report();
    if (failure) {
      throw new KvtcError(failure.code, failure.message, { exitCode: failure.exitCode, fix: failure.fix, context: { ...failure.context, ...(reportError ? { report_error: String((reportError as Error).message) } : {}) }, result: json });
    }
    if (reportError) {
      const e = asIoError(reportError) ?? new KvtcError('IO_ERROR', `the report could not be written to ${opts.report}: ${(reportError as Error).message}`);
      throw new KvtcError(e.code, e.message, { fix: e.fix, context: e.context, result: json });
    }
    printJson(io, json);
    return;
  }
  printTables(io, result, profile, profileNote);
  await report();
  if (reportError && !failure) throw reportError;
  if (reportError) io.err(`error: the report could not be written to ${opts.report}: ${(reportError as Error).message}`);
  else if (opts.report) io.out(`report written to ${opts.report}`);
  if (failure) throw failure;
  if (maxDrop) io.out(`--max-drop ${opts.maxDrop}: passed (${guarded} drop ${(maxDrop.drop_points as number).toFixed(2)} points)`);
}

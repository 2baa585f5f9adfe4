// Tested by test/evaluate/evaluate-api.test.ts and test/evaluate/evaluate-cli.test.ts.
/**
 * `kvtc evaluate` as a library call: load the model, find its profile (or take the ones given),
 * choose the codecs, run the paired MMLU / long-context / perplexity evaluation (run.ts) and
 * apply the --max-drop gate. Everything the CLI decides besides printing lives here, so a
 * library user gets the same evaluation as `kvtc evaluate`. Never prints, never exits.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { EVALUATE_DEFAULTS } from '../defaults.js';
import { InterruptedError, KvtcError, UsageError } from '../errors.js';
import { loadModel, modelDirFromOption, type LoadedModel } from '../model/load.js';
import { ModelRunner } from '../model/runner.js';
import { checkDevice, type Device } from '../onnx/session.js';
import { readDynamoProfile } from '../dynamo/profile.js';
import { checkDynamoProfileForModel, checkProfileForModel } from '../profile/compat.js';
import type { Profile } from '../profile/read.js';
import type { ProgressFn } from '../progress.js';
import { checkCodecNames, createCodecs, defaultCodecNames, sweepNames, type CacheCodec, type CodecName } from './codecs.js';
import { checkMaxDrop, maxDropError, type MaxDropVerdict } from './gate.js';
import { findProfiles, profileCandidates } from './profiles.js';
import { configHash, EvaluationJournal } from './journal.js';
import { runEvaluation, type EvaluateResult } from './run.js';
import { WIKITEXT_TEST } from '../paths.js';
import { VERSION } from '../version.js';
import type { DynamoProfile } from '../dynamo/profile.js';
import { resolveSubjects } from './subjects.js';
import { checkPerplexityWindow } from './perplexity.js';

export interface EvaluateModelOptions {
  /** Model directory (or a file in it); the bundled model when left out. */
  model?: string;
  /** Which ONNX graph of the model directory to run (a file or a transformers.js dtype). */
  onnx?: string;
  /** Profile directories; several make a ratio sweep. Default: the model's profile (profileCandidates), if any. */
  profiles?: readonly string[];
  /** A `kvtc calibrate --target dynamo` profile for the "dynamo" codec. */
  dynamoProfile?: string;
  /** Subjects or groups (stem, humanities, social_sciences, other, all); default all. */
  subjects?: string | readonly string[];
  /** Questions per subject; all when left out. */
  limit?: number;
  /** Few-shot examples: 0 or 5. */
  shots?: number;
  /** Codecs to compare with the uncompressed run; default defaultCodecNames. */
  codecs?: readonly CodecName[];
  /** Tokens of text for perplexity; 0 skips it. */
  perplexityTokens?: number;
  /** UTF-8 text for perplexity (default WikiText-2 test). */
  perplexityText?: string;
  /** Tokens per perplexity window (≥ 64, ≤ the model's context); default the model's context, capped by the text. */
  perplexityWindow?: number;
  /** Long-context tasks of each kind; 0 skips them. */
  longContext?: number;
  /** Prompt length of the long-context tasks; default the model's context, at most EVALUATE_DEFAULTS.longContextTokens. */
  longContextTokens?: number;
  seed?: number;
  device?: Device;
  /** The accuracy gate: the largest accuracy drop, in points, the guarded codecs may show. */
  maxDrop?: number;
  onProgress?: ProgressFn;
  /**
   * Stops at the next codec boundary of the item being scored (that item is dropped); the result is
   * marked partial (see `failure`).
   */
  signal?: AbortSignal;
  /**
   * A file to journal each scored item to (journal.ts). When it already holds items of this same
   * configuration they are taken from it instead of being scored again (resume); a journal of
   * another configuration is refused (USAGE) unless `fresh`.
   */
  journal?: string;
  /** Replace an existing journal instead of resuming it. */
  fresh?: boolean;
}

export interface ModelEvaluation {
  result: EvaluateResult;
  /** The profiles evaluated (as codecs kvtc, or kvtc@<ratio>x in a sweep). */
  profiles: Profile[];
  /** Set when no profile was given or found: kvtc was not evaluated, only the baselines. */
  profileNote?: string;
  /** The --max-drop verdict, when maxDrop was given. */
  maxDrop?: MaxDropVerdict;
  /**
   * The error the run ends with although a result exists: the gate failed (THRESHOLD_EXCEEDED) or
   * the run was interrupted (INTERRUPTED; the result covers the questions scored). Not thrown,
   * so the result can still be reported; `kvtc evaluate` throws it after printing.
   */
  failure?: KvtcError;
  /** The journal written, and how many of its items came from an earlier run. */
  journal?: { path: string; resumed: number; droppedPartialLine: boolean };
}

/** Checks that need nothing loaded (a typo costs nothing); returns the resolved subjects. */
export function checkEvaluateOptions(options: Pick<EvaluateModelOptions, 'device' | 'subjects' | 'shots' | 'codecs'>): {
  subjects: string[];
} {
  checkDevice(options.device ?? 'cpu');
  const subjects = resolveSubjects(options.subjects ?? 'all');
  const shots = options.shots ?? EVALUATE_DEFAULTS.shots;
  if (shots > 5)
    throw new UsageError(`--shots ${shots}: MMLU's dev split has 5 examples per subject`, 'Use --shots 0 (the harness default) or 5.', {
      value: shots,
    });
  if (options.codecs) checkCodecNames(options.codecs);
  return { subjects };
}

/** What `kvtc evaluate` does, without the printing: see EvaluateModelOptions and ModelEvaluation. */
export async function evaluate(options: EvaluateModelOptions = {}): Promise<ModelEvaluation> {
  const { subjects } = checkEvaluateOptions(options);
  const device = options.device ?? 'cpu';
  const model = await loadModel(modelDirFromOption(options.model, options.onnx), { device });
  let codecs: CacheCodec[] = [];
  let journal: EvaluationJournal | undefined;
  // The model's session and every codec (sessions, worker threads) are released on every path.
  try {
    const profiles = await findProfiles(options.profiles, model);
    for (const p of profiles) checkProfileForModel(p, model, 'the model being evaluated');
    sweepNames(profiles); // the same profile twice is a usage error, before any work
    const dynamo = options.dynamoProfile ? await readDynamoProfile(options.dynamoProfile) : undefined;
    if (dynamo) checkDynamoProfileForModel(dynamo, model, 'the model being evaluated');
    const codecNames = options.codecs
      ? [...new Set(options.codecs)]
      : defaultCodecNames({ profile: profiles.length > 0, dynamoProfile: dynamo !== undefined });
    if (codecNames.includes('kvtc') && !profiles.length) {
      throw new UsageError(
        `--codec kvtc needs a profile, and there is none for ${model.name} (looked in ${profileCandidates(model).join(', ')})`,
        `Calibrate one with \`kvtc calibrate --model ${model.dir}\`, or pass --profile DIR.`,
      );
    }
    const profileNote = profiles.length
      ? undefined
      : `no profile for ${model.name} (looked in ${profileCandidates(model).join(', ')}): kvtc is not evaluated, only the baselines (run \`kvtc calibrate\` to make one).`;
    codecs = await createCodecs(codecNames, { profiles, dynamoProfile: dynamo, device });
    const perplexityTokens = options.perplexityTokens ?? EVALUATE_DEFAULTS.perplexityTokens;
    if (perplexityTokens > 0) checkPerplexityWindow(options.perplexityWindow, model.spec.maxPositions);
    const lc = {
      perKind: options.longContext ?? EVALUATE_DEFAULTS.longContext,
      contextTokens: longContextTokens(model, options.longContextTokens),
    };
    if (options.journal) {
      const config = await journalConfig({
        model,
        device,
        profiles,
        dynamo,
        codecs,
        subjects,
        limit: options.limit,
        shots: options.shots ?? EVALUATE_DEFAULTS.shots,
        perplexityTokens,
        perplexityText: options.perplexityText,
        perplexityWindow: options.perplexityWindow,
        longContext: lc,
        seed: options.seed ?? EVALUATE_DEFAULTS.seed,
      });
      journal = await EvaluationJournal.open(options.journal, config, { fresh: options.fresh });
    }
    const result = await runEvaluation({
      runner: new ModelRunner(model),
      subjects,
      limit: options.limit,
      shots: options.shots ?? EVALUATE_DEFAULTS.shots,
      codecs,
      perplexityTokens,
      perplexityTextPath: options.perplexityText,
      perplexityWindow: options.perplexityWindow,
      longContext: lc,
      seed: options.seed ?? EVALUATE_DEFAULTS.seed,
      onProgress: options.onProgress,
      signal: options.signal,
      journal,
    });
    const maxDrop = options.maxDrop === undefined ? undefined : checkMaxDrop(result, options.maxDrop);
    const journalInfo = journal && { path: journal.path, resumed: result.resumed ?? 0, droppedPartialLine: journal.droppedPartialLine };
    return {
      result,
      profiles,
      profileNote,
      maxDrop,
      failure: (maxDrop && maxDropError(result, maxDrop)) || partialError(result, journal?.path),
      ...(journalInfo ? { journal: journalInfo } : {}),
    };
  } finally {
    // Whatever ends the run (done, interrupted, an error), the journal is flushed for a resume.
    journal?.close();
    await Promise.all(codecs.map((c) => c.release()));
    await model.session.release();
  }
}

/** Long-context prompts fill the model's context, up to the default length unless one is given. */
function longContextTokens(model: LoadedModel, asked: number | undefined): number {
  return asked ?? Math.min(model.spec.maxPositions, EVALUATE_DEFAULTS.longContextTokens);
}

function partialError(result: EvaluateResult, journal: string | undefined): KvtcError | undefined {
  if (!result.partial) return undefined;
  const p = result.partial;
  const later = [
    p.longContextPlanned !== undefined ? `${p.longContextScored} of ${p.longContextPlanned} long-context tasks` : '',
    p.perplexityWindowsPlanned !== undefined ? `${p.perplexityWindowsScored} of ${p.perplexityWindowsPlanned} perplexity windows` : '',
  ].filter(Boolean);
  return new InterruptedError(
    `interrupted: ${p.questionsScored} of ${p.questionsPlanned} questions${later.length ? `, ${later.join(', ')}` : ''} were scored; the results above are partial`,
    journal
      ? `Re-run the same command to resume: the items scored so far are kept in the journal ${journal} and are not scored again.`
      : 'Re-run the command for the full evaluation (with --report or --journal FILE, an interrupted run can be resumed).',
    {
      questions_scored: p.questionsScored,
      questions_planned: p.questionsPlanned,
      ...(journal ? { journal } : {}),
    },
  );
}

/**
 * Everything that decides the items' results, for the journal's hash: a journal is resumed only
 * by a run that would have scored its items the same way.
 */
async function journalConfig(c: {
  model: LoadedModel;
  device: Device;
  profiles: readonly Profile[];
  dynamo: DynamoProfile | undefined;
  codecs: readonly CacheCodec[];
  subjects: readonly string[];
  limit: number | undefined;
  shots: number;
  perplexityTokens: number;
  perplexityText: string | undefined;
  perplexityWindow: number | undefined;
  longContext: { perKind: number; contextTokens: number };
  seed: number;
}): Promise<Record<string, unknown>> {
  let perplexity: Record<string, unknown> = { tokens: 0 };
  if (c.perplexityTokens > 0) {
    const source = c.perplexityText ?? WIKITEXT_TEST;
    let sha256 = 'unreadable';
    try {
      sha256 = createHash('sha256')
        .update(await readFile(source))
        .digest('hex');
    } catch {
      // runEvaluation reports a missing text with its own error, after the MMLU part.
    }
    // `window` is left out (undefined: not hashed) at its default, so journals of runs from before
    // --perplexity-window existed still match the same command.
    perplexity = { tokens: c.perplexityTokens, text: basename(source), text_sha256: sha256, window: c.perplexityWindow };
  }
  return {
    kvtc_version: VERSION,
    model: { name: c.model.name, fingerprint: c.model.fingerprint.id },
    device: c.device,
    profiles: c.profiles.map((p) => p.manifest.profile_id),
    dynamo_profile: c.dynamo ? configHash(c.dynamo.manifest as unknown as Record<string, unknown>) : null,
    codecs: c.codecs.map((x) => `${x.name} sink ${x.sink} window ${x.window}`),
    subjects: [...c.subjects],
    limit: c.limit ?? 'all',
    shots: c.shots,
    long_context: c.longContext.perKind > 0 ? { per_kind: c.longContext.perKind, tokens: c.longContext.contextTokens } : 0,
    perplexity,
    seed: c.seed,
  };
}

// Tested by test/evaluate/evaluate-api.test.ts and test/evaluate/evaluate-cli.test.ts.
/**
 * `kvtc evaluate` as a library call: load the model, find its profile (or take the ones given),
 * choose the codecs, run the paired MMLU / long-context / perplexity evaluation (run.ts) and
 * apply the --max-drop gate. Everything the CLI decides besides printing lives here, so a
 * library user gets the same evaluation as `kvtc evaluate`. Never prints, never exits.
 */
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
import { runEvaluation, type EvaluateResult } from './run.js';
import { resolveSubjects } from './subjects.js';

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
  /** Long-context tasks of each kind; 0 skips them. */
  longContext?: number;
  /** Prompt length of the long-context tasks; default the model's context, at most EVALUATE_DEFAULTS.longContextTokens. */
  longContextTokens?: number;
  seed?: number;
  device?: Device;
  /** The accuracy gate: the largest accuracy drop, in points, the guarded codecs may show. */
  maxDrop?: number;
  onProgress?: ProgressFn;
  /** Stops after the question being scored; the result is marked partial (see `failure`). */
  signal?: AbortSignal;
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
    const result = await runEvaluation({
      runner: new ModelRunner(model),
      subjects,
      limit: options.limit,
      shots: options.shots ?? EVALUATE_DEFAULTS.shots,
      codecs,
      perplexityTokens: options.perplexityTokens ?? EVALUATE_DEFAULTS.perplexityTokens,
      perplexityTextPath: options.perplexityText,
      longContext: {
        perKind: options.longContext ?? EVALUATE_DEFAULTS.longContext,
        contextTokens: longContextTokens(model, options.longContextTokens),
      },
      seed: options.seed ?? EVALUATE_DEFAULTS.seed,
      onProgress: options.onProgress,
      signal: options.signal,
    });
    const maxDrop = options.maxDrop === undefined ? undefined : checkMaxDrop(result, options.maxDrop);
    return { result, profiles, profileNote, maxDrop, failure: (maxDrop && maxDropError(result, maxDrop)) || partialError(result) };
  } finally {
    await Promise.all(codecs.map((c) => c.release()));
    await model.session.release();
  }
}

/** Long-context prompts fill the model's context, up to the default length unless one is given. */
function longContextTokens(model: LoadedModel, asked: number | undefined): number {
  return asked ?? Math.min(model.spec.maxPositions, EVALUATE_DEFAULTS.longContextTokens);
}

function partialError(result: EvaluateResult): KvtcError | undefined {
  if (!result.partial) return undefined;
  const { questionsScored, questionsPlanned } = result.partial;
  return new InterruptedError(
    `interrupted: ${questionsScored} of ${questionsPlanned} questions were scored; the results above are partial`,
    'Re-run the command for the full evaluation.',
    {
      questions_scored: questionsScored,
      questions_planned: questionsPlanned,
    },
  );
}

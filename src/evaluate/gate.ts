// Tested by test/evaluate/gate.test.ts and test/cli/program.test.ts (exit 3).
/**
 * The accuracy gate (`kvtc evaluate --max-drop`): which codecs it guards and whether their
 * accuracy drop stays within the threshold. A verdict, not an exit: the CLI turns a failed
 * verdict's error (THRESHOLD_EXCEEDED) into exit code 3; a library caller reads `passed`.
 */
import { KvtcError, UsageError } from '../errors.js';
import { isKvtcCodec } from './codecs.js';
import type { EvaluateResult } from './run.js';

export interface MaxDropCheck {
  codec: string;
  /** Uncompressed minus codec accuracy, in points (negative when the codec scored higher). */
  drop_points: number;
  passed: boolean;
}

export interface MaxDropVerdict {
  /** The guarded codec with the largest drop. */
  codec: string;
  threshold_points: number;
  drop_points: number;
  passed: boolean;
  /** Each guarded codec, when there are several (a ratio sweep). */
  checked?: MaxDropCheck[];
}

/** --max-drop guards kvtc — every profile of a sweep — or, without kvtc, the first codec asked for. */
export function guardedCodecs(result: EvaluateResult): string[] {
  const evaluated = result.settings.codecs.map((c) => c.name);
  return evaluated.some(isKvtcCodec) ? evaluated.filter(isKvtcCodec) : evaluated.slice(0, 1);
}

/** The gate's verdict on a finished run; throws USAGE when the run has no codec to guard. */
export function checkMaxDrop(result: EvaluateResult, maxDrop: number): MaxDropVerdict {
  const guarded = guardedCodecs(result);
  if (!guarded.length) throw new UsageError('--max-drop needs a codec to check', 'Pass --codec kvtc (or another codec).');
  const checked = guarded.map((name): MaxDropCheck => {
    const c = result.summary.overall.codecs[name];
    return { codec: name, drop_points: -c.delta_points, passed: !(-c.delta_points > maxDrop) };
  });
  const worst = checked.reduce((a, b) => (b.drop_points > a.drop_points ? b : a));
  return {
    codec: worst.codec,
    threshold_points: maxDrop,
    drop_points: worst.drop_points,
    passed: checked.every((c) => c.passed),
    ...(checked.length > 1 ? { checked } : {}),
  };
}

/** THRESHOLD_EXCEEDED naming the worst codec, its drop and its interval; undefined when the gate passed. */
export function maxDropError(result: EvaluateResult, verdict: MaxDropVerdict): KvtcError | undefined {
  const { codec, drop_points: drop, threshold_points: threshold } = verdict;
  if (!(drop > threshold)) return undefined;
  const c = result.summary.overall.codecs[codec];
  return new KvtcError(
    'THRESHOLD_EXCEEDED',
    `${codec} loses ${drop.toFixed(2)} accuracy points on ${c.n} questions (uncompressed ${(100 * result.summary.overall.baseline.accuracy).toFixed(1)}%, ${codec} ${(100 * c.accuracy.accuracy).toFixed(1)}%; 95% CI of the drop [${(-c.delta_ci95[1]).toFixed(1)}, ${(-c.delta_ci95[0]).toFixed(1)}]), more than --max-drop ${threshold}`,
    {
      fix: isKvtcCodec(codec)
        ? 'Calibrate a profile with a lower --ratio (or more calibration --tokens), then evaluate again.'
        : 'Choose a less lossy codec or raise --max-drop.',
      context: { codec, drop_points: drop, threshold_points: threshold },
    },
  );
}

/** The --max-drop gate (src/evaluate/gate.ts) on hand-made summaries: which codecs it guards, its verdict and its error. */
import { describe, expect, it } from 'vitest';
import { checkMaxDrop, guardedCodecs, maxDropError } from '../../src/evaluate/gate.js';
import type { EvaluateResult } from '../../src/evaluate/run.js';

/** A finished run with these codecs and their accuracy deltas (points), on 10 questions, baseline 50%. */
function run(deltas: Record<string, number>): EvaluateResult {
  const codecs = Object.fromEntries(
    Object.entries(deltas).map(([name, d]) => [
      name,
      { n: 10, delta_points: d, delta_ci95: [d - 5, d + 5], accuracy: { accuracy: 0.5 + d / 100 } },
    ]),
  );
  return {
    settings: { codecs: Object.keys(deltas).map((name) => ({ name, sink: 4, window: 128 })) },
    summary: { overall: { baseline: { accuracy: 0.5 }, codecs } },
  } as unknown as EvaluateResult;
}

describe('the accuracy gate', () => {
  it.each([
    [{ kvtc: -2, int8: -30 }, ['kvtc']],
    [{ int4: -1, 'kvtc@8x': -3, 'kvtc@20x': -9 }, ['kvtc@8x', 'kvtc@20x']],
    [{ int8: -1, int4: -7 }, ['int8']],
    [{}, []],
  ])('guards kvtc (every profile of a sweep), else the first codec: %j → %j', (deltas, guarded) => {
    expect(guardedCodecs(run(deltas))).toEqual(guarded);
  });

  it('passes at the threshold and fails above it, naming the worst codec', () => {
    const r = run({ kvtc: -2.5, int8: -40 });
    expect(checkMaxDrop(r, 2.5)).toEqual({ codec: 'kvtc', threshold_points: 2.5, drop_points: 2.5, passed: true });
    expect(maxDropError(r, checkMaxDrop(r, 2.5))).toBeUndefined();
    const v = checkMaxDrop(r, 2);
    expect(v.passed).toBe(false);
    const e = maxDropError(r, v)!;
    expect(e).toMatchObject({ code: 'THRESHOLD_EXCEEDED', context: { codec: 'kvtc', drop_points: 2.5, threshold_points: 2 } });
    expect(e.message).toBe(
      'kvtc loses 2.50 accuracy points on 10 questions (uncompressed 50.0%, kvtc 47.5%; 95% CI of the drop [-2.5, 7.5]), more than --max-drop 2',
    );
    expect(e.fix).toMatch(/lower --ratio/);
  });

  it('a sweep is checked profile by profile; the verdict carries each', () => {
    const v = checkMaxDrop(run({ 'kvtc@8x': -0.5, 'kvtc@20x': -3 }), 1);
    expect(v).toMatchObject({ codec: 'kvtc@20x', drop_points: 3, passed: false });
    expect(v.checked).toEqual([
      { codec: 'kvtc@8x', drop_points: 0.5, passed: true },
      { codec: 'kvtc@20x', drop_points: 3, passed: false },
    ]);
  });

  it('a codec that scored higher has a negative drop and passes; a baseline gate suggests another codec', () => {
    expect(checkMaxDrop(run({ int8: 4 }), 0)).toMatchObject({ codec: 'int8', drop_points: -4, passed: true });
    expect(maxDropError(run({ int4: -9 }), checkMaxDrop(run({ int4: -9 }), 1))?.fix).toBe('Choose a less lossy codec or raise --max-drop.');
  });

  it('no codec to guard is a usage error', () => {
    expect(() => checkMaxDrop(run({}), 1)).toThrow(
      expect.objectContaining({ code: 'USAGE', message: '--max-drop needs a codec to check' }),
    );
  });
});

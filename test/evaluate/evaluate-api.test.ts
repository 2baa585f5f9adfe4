/**
 * `evaluate` as a library user calls it (src/index.ts): default profile discovery, codec choice
 * and the --max-drop gate in the core, with the same figures `kvtc evaluate --json` prints.
 */
import { describe, expect, it } from 'vitest';
import { memoryIO } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { checkEvaluateOptions, checkMaxDrop, CODEC_NAMES, defaultCodecNames, evaluate, profileCandidates } from '../../src/index.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';

describe('evaluate (library)', () => {
  it("finds the model's profile, gates kvtc, and agrees with kvtc evaluate --json", async () => {
    const options = {
      subjects: 'world_religions',
      limit: 3,
      codecs: ['kvtc', 'int8'] as const,
      perplexityTokens: 0,
      longContext: 0,
      maxDrop: 1,
    };
    const ev = await evaluate(options);
    const { result, profiles, maxDrop, failure } = ev;
    // Default discovery: the first candidate that holds a profile, as the CLI would pick.
    expect(profiles).toHaveLength(1);
    expect(profileCandidates({ name: result.model.name, dir: result.model.dir })).toContain(profiles[0].dir);
    expect(ev.profileNote).toBeUndefined();
    expect(result.settings.codecs.map((c) => c.name)).toEqual(['kvtc', 'int8']);
    expect(result.summary.overall.n).toBe(3);
    // The gate guards kvtc only, and its verdict is the drop of the summary.
    const kvtc = result.summary.overall.codecs.kvtc;
    expect(maxDrop).toMatchObject({
      codec: 'kvtc',
      threshold_points: 1,
      drop_points: -kvtc.delta_points,
      passed: !(-kvtc.delta_points > 1),
    });
    expect(failure?.code).toBe(maxDrop!.passed ? undefined : 'THRESHOLD_EXCEEDED');
    expect(checkMaxDrop(result, maxDrop!.drop_points).passed).toBe(true);

    // The CLI is a printer over the same call: same questions, same accuracies, same verdict.
    const io = memoryIO();
    const code = await main(
      [
        'node',
        'kvtc',
        'evaluate',
        '--subjects',
        'world_religions',
        '--limit',
        '3',
        '--codec',
        'kvtc,int8',
        '--perplexity-tokens',
        '0',
        '--long-context',
        '0',
        '--max-drop',
        '1',
        '--json',
        '--quiet',
      ],
      io,
    );
    expect(code).toBe(maxDrop!.passed ? 0 : 3);
    const doc = JSON.parse(io.stdout.join('\n'));
    expect(doc.profile.dir).toBe(profiles[0].dir);
    expect(doc.baseline.accuracy).toBe(result.summary.overall.baseline.accuracy);
    expect(doc.compressed.accuracy).toBe(kvtc.accuracy.accuracy);
    expect(doc.delta_points).toBeCloseTo(kvtc.delta_points, 10);
    expect(doc.max_drop).toMatchObject({ codec: 'kvtc', passed: maxDrop!.passed });
    expect(doc.codecs.kvtc).toMatchObject({ sink: profiles[0].manifest.settings.sink, recent: profiles[0].manifest.settings.window });
  });

  it('stops before the first question when the signal is already aborted (INTERRUPTED, nothing to report)', async () => {
    await expect(
      evaluate({ subjects: 'anatomy', limit: 1, codecs: ['int8'], perplexityTokens: 0, longContext: 0, signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({
      code: 'INTERRUPTED',
      message: 'interrupted before the first question was scored: nothing to report',
    });
  });

  it('checks its options before loading anything', async () => {
    expect(checkEvaluateOptions({ subjects: 'stem' }).subjects.length).toBeGreaterThan(10);
    for (const [opts, message] of [
      [{ shots: 6 }, /--shots 6: MMLU's dev split has 5 examples per subject/],
      [{ codecs: ['zip'] }, /unknown codec "zip"; valid: kvtc, identity, dynamo, fp16, int8, int4, kivi2/],
      [{ subjects: 'astronomyy' }, /astronomy/],
    ] as const) {
      expect(() => checkEvaluateOptions(opts as never)).toThrow(
        expect.objectContaining({ code: 'USAGE', message: expect.stringMatching(message) }),
      );
      await expect(evaluate({ ...(opts as object), model: '/nonexistent/model' })).rejects.toMatchObject({ code: 'USAGE' });
    }
    expect(CODEC_NAMES).toContain('kivi2');
    expect(defaultCodecNames({ profile: true, dynamoProfile: false })).toEqual(['kvtc', 'fp16', 'int8', 'int4', 'kivi2']);
    expect(defaultCodecNames({ profile: false, dynamoProfile: true })).toEqual(['dynamo', 'fp16', 'int8', 'int4', 'kivi2']);
    expect(DEFAULT_MODEL_DIR).toBeTruthy();
  });
});

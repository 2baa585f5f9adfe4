import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildLongContextTasks, fillerSentences } from '../../src/evaluate/longcontext.js';
import { createCodecs } from '../../src/evaluate/codecs.js';
import { runEvaluation } from '../../src/evaluate/run.js';
import { sampleLines } from '../../src/evaluate/report.js';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { readProfile } from '../../src/profile/read.js';
import { join } from 'node:path';

let model: LoadedModel;
beforeAll(async () => {
  model = await loadModel(DEFAULT_MODEL_DIR);
});
afterAll(() => model.session.release());

describe('long-context tasks', () => {
  const filler = () => fillerSentences(readFileSync(WIKITEXT_TEST, 'utf8'));

  it('fill the context, hide the answer in it, and offer four equal-length candidates', () => {
    const tasks = buildLongContextTasks(model.tokenizer, filler(), { perKind: 5, contextTokens: 480, maxPositions: 512, seed: 3 });
    // Scored round robin over the kinds, so a run stopped by the clock has both.
    expect(tasks.map((t) => `${t.kind}/${t.index}`)).toEqual([0, 1, 2, 3, 4].flatMap((i) => [`needle/${i}`, `variable_tracking/${i}`]));
    for (const t of tasks) {
      expect(t.request.contextTokens).toBeGreaterThan(400);
      expect(t.request.contextTokens).toBeLessThanOrEqual(512);
      expect(new Set(t.continuations).size).toBe(4);
      const lens = t.continuations.map((c) => model.tokenizer.encode(c, { addBos: false }).length);
      expect(new Set(lens).size).toBe(1);
      const answer = t.continuations[t.gold].trim().replace(/\.$/, '');
      if (t.kind === 'needle') expect(t.prompt).toContain(`The special magic number is ${answer}.`);
      else {
        // The queried variable's chain starts from the answer; the other chain's value is a distractor.
        const values = [...t.prompt.matchAll(/VAR [A-Z]{2} = (\d{4})\./g)].map((m) => m[1]);
        expect(values).toHaveLength(2);
        expect(values).toContain(answer);
        expect(t.continuations.map((c) => c.trim().replace(/\.$/, ''))).toEqual(expect.arrayContaining(values));
      }
    }
    const again = buildLongContextTasks(model.tokenizer, filler(), { perKind: 5, contextTokens: 480, maxPositions: 512, seed: 3 });
    expect(again.map((t) => t.prompt)).toEqual(tasks.map((t) => t.prompt));
  });

  it('are scored paired: identity gives Δ 0 exactly; kvtc compresses most of their tokens; --log-samples has a line per task', async () => {
    const profile = await readProfile(join(DEFAULT_PROFILES_DIR, 'stories260k'));
    const codecs = await createCodecs(['identity', 'kvtc'], { profile });
    try {
      const r = await runEvaluation({
        runner: new ModelRunner(model),
        subjects: ['anatomy'],
        limit: 2,
        shots: 0,
        codecs,
        perplexityTokens: 0,
        longContext: { perKind: 3, contextTokens: 512 },
      });
      const lc = r.longContext!;
      expect(lc.tasks).toEqual({ needle: 3, variable_tracking: 3 });
      expect(lc.overall.n).toBe(6);
      expect(lc.overall.codecs.identity.delta_points).toBe(0);
      expect(lc.overall.codecs.identity.kl).toBe(0);
      expect(lc.overall.codecs.kvtc.compressed_share).toBeGreaterThan(0.5);
      const lines = sampleLines(r, { version: 'test', date: 'now' })
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      expect(lines).toHaveLength(1 + 2 + 6);
      expect(lines[0]).toMatchObject({ kvtc: 'test', date: 'now' });
      expect(lines.filter((l) => l.task === 'long_context').map((l) => l.subject)).toEqual([
        'needle',
        'variable_tracking',
        'needle',
        'variable_tracking',
        'needle',
        'variable_tracking',
      ]);
      expect(lines[1].codecs.kvtc.log_lik).toHaveLength(4);
    } finally {
      await Promise.all(codecs.map((c) => c.release()));
    }
  });
});

describe('sweep plot', () => {
  it('renders every codec of a run as points with intervals, kvtc joined, valid SVG', async () => {
    const { renderSweepSvg } = await import('../../src/evaluate/sweep.js');
    const row = (codec: string, ratio: number, d: number) => ({
      codec,
      ratio_compressed: ratio,
      ratio: ratio / 2,
      delta_points: d,
      delta_ci95: [d - 2, d + 2] as [number, number],
      agreement: 0.9,
      agreement_ci95: [0.85, 0.95] as [number, number],
      kl: 0.01,
      kl_ci95: [0.005, 0.02] as [number, number],
      compressed_share: 0.7,
      perplexity_delta: 0.1,
      perplexity_delta_ci95: [0.05, 0.2] as [number, number],
      perplexity_delta_percent: 1,
      perplexity_delta_percent_ci95: [0.5, 2] as [number, number],
      long_context_delta_points: d,
      long_context_ci95: [d - 1, d + 1] as [number, number],
    });
    const svg = renderSweepSvg([row('int8', 1.33, 0), row('kvtc@8x', 7.7, -1), row('kvtc@20x', 18, -3)], { title: 'a <title> & more' });
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('a &lt;title&gt; &amp; more');
    expect(svg.match(/<circle/g)).toHaveLength(3 * 5);
    expect(svg.match(/<polyline/g)).toHaveLength(5);
    // Every panel draws each point's 95% interval as a vertical line: x1 = x2 on the point.
    const bars = [...svg.matchAll(/<line x1="([\d.]+)" x2="([\d.]+)" y1="([\d.]+)" y2="([\d.]+)" stroke="#(?:1f6fb4|d95f02)"/g)];
    expect(bars).toHaveLength(3 * 5);
    for (const b of bars) expect(b[1]).toBe(b[2]);
    expect(svg).toContain('kvtc@20x: -3.0 at 18.00x');
  });
});

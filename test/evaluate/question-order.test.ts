/**
 * MMLU questions are scored round robin over the subjects (src/evaluate/run.ts): question 0 of
 * every subject, then question 1, … so a run stopped at a time limit has scored every subject
 * about equally, not the first subjects whole.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { evaluate } from '../../src/evaluate/evaluate.js';

const root = mkdtempSync(join(tmpdir(), 'kvtc-order-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('MMLU question order', () => {
  it('goes round robin over the subjects, and the summary is per subject as before', async () => {
    const path = join(root, 'j.jsonl');
    const ev = await evaluate({
      subjects: 'world_religions,astronomy,virology',
      limit: 2,
      shots: 0,
      codecs: ['int4'],
      perplexityTokens: 0,
      longContext: 0,
      journal: path,
    });
    expect(ev.failure).toBeUndefined();
    const keys = readFileSync(path, 'utf8')
      .split('\n')
      .filter(Boolean)
      .slice(1)
      .map((l) => JSON.parse(l).key as string);
    expect(keys).toHaveLength(6);
    // The first three keys are question 0 of three different subjects, the last three question 1.
    const index = keys.map((k) => Number(k.split('/')[2]));
    expect(index).toEqual([0, 0, 0, 1, 1, 1]);
    expect(new Set(keys.slice(0, 3).map((k) => k.split('/')[1])).size).toBe(3);
    expect(keys.slice(3).map((k) => k.split('/')[1])).toEqual(keys.slice(0, 3).map((k) => k.split('/')[1]));
    const subjects = ev.result.summary.subjects;
    for (const s of ['world_religions', 'astronomy', 'virology']) expect(subjects[s].n).toBe(2);
    expect(ev.result.summary.overall.n).toBe(6);
  });
});

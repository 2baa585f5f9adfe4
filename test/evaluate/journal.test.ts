/**
 * The evaluation journal (src/evaluate/journal.ts): an evaluation stopped after k items and run
 * again ends with the records an uninterrupted run gives; a journal of other settings is refused
 * naming them; a last line cut short by a kill is dropped and its item scored again.
 */
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { memoryIO } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { evaluate, type EvaluateModelOptions } from '../../src/evaluate/evaluate.js';
import { configDifferences, configHash, EvaluationJournal, type JournalEntry } from '../../src/evaluate/journal.js';
import type { EvaluateResult } from '../../src/evaluate/run.js';
import { REPO } from '../helpers/process.js';

const root = mkdtempSync(join(tmpdir(), 'kvtc-journal-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Small but every kind of item: 4 MMLU questions, 2 long-context tasks, 2 perplexity windows. */
const OPTIONS = {
  subjects: 'world_religions',
  limit: 4,
  shots: 0,
  codecs: ['kvtc', 'int4'],
  perplexityTokens: 1024,
  longContext: 1,
  longContextTokens: 256,
} satisfies EvaluateModelOptions;
const ITEMS = 4 + 2 + 2;

/** Floats from the same model run twice in one process agree to far better than 1e-9. */
function expectClose(a: unknown, b: unknown, path = 'result'): void {
  if (typeof a === 'number' && typeof b === 'number') {
    if (Number.isFinite(a) || Number.isFinite(b))
      expect(Math.abs(a - b), `${path}: ${a} vs ${b}`).toBeLessThanOrEqual(1e-9 * Math.max(1, Math.abs(a)));
    else expect(Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b)), path).toBe(true);
    return;
  }
  if (Array.isArray(a) && Array.isArray(b)) {
    expect(b.length, `${path}.length`).toBe(a.length);
    a.forEach((x, i) => expectClose(x, b[i], `${path}[${i}]`));
    return;
  }
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    expect(Object.keys(b).sort(), `${path} keys`).toEqual(Object.keys(a).sort());
    for (const k of Object.keys(a)) expectClose((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${path}.${k}`);
    return;
  }
  expect(b, path).toEqual(a);
}

/** What a report is made of: everything but the clock. */
const content = (r: EvaluateResult) => ({
  questions: r.questions,
  summary: r.summary,
  longContext: r.longContext,
  perplexity: r.perplexity,
  settings: r.settings,
  model: r.model,
  partial: r.partial,
});

const lines = (path: string) => readFileSync(path, 'utf8').split('\n').filter(Boolean);

describe('evaluation journal', () => {
  let reference: EvaluateResult;

  it('an uninterrupted run journals every item, once, after the configuration header', async () => {
    const path = join(root, 'whole.jsonl');
    const ev = await evaluate({ ...OPTIONS, journal: path });
    reference = ev.result;
    expect(ev.failure).toBeUndefined();
    expect(ev.journal).toEqual({ path, resumed: 0, droppedPartialLine: false });
    const [header, ...entries] = lines(path).map((l) => JSON.parse(l));
    expect(header).toMatchObject({ format: 'kvtc-evaluate-journal', format_version: 1, config_hash: configHash(header.config) });
    expect(header.config).toMatchObject({ shots: 0, limit: 4, subjects: ['world_religions'], seed: 0 });
    // --perplexity-window at its default adds nothing to the configuration: journals of builds
    // from before it existed still match the same command.
    expect(Object.keys(header.config.perplexity).sort()).toEqual(['text', 'text_sha256', 'tokens']);
    expect(entries.map((e: JournalEntry) => e.key)).toEqual([
      'mmlu/world_religions/0',
      'mmlu/world_religions/1',
      'mmlu/world_religions/2',
      'mmlu/world_religions/3',
      'long_context/needle/0',
      'long_context/variable_tracking/0',
      'perplexity/0',
      'perplexity/1',
    ]);
    expect(reference.questions).toHaveLength(4);
    expect(reference.longContext?.questions).toHaveLength(2);
    expect(reference.perplexity?.windows).toBe(2);
  });

  for (const k of [3, 5, 7]) {
    it(`stopped after ${k} items, then run again: the journal's ${k} items are reused and the records equal the uninterrupted run's`, async () => {
      const path = join(root, `stopped-${k}.jsonl`);
      const stop = new AbortController();
      let done = 0;
      const first = await evaluate({
        ...OPTIONS,
        journal: path,
        signal: stop.signal,
        // Abort as item k is reported: the run stops before scoring item k + 1.
        onProgress: (p) => {
          if (p.done > 0 && ++done === k) stop.abort();
        },
      });
      expect(first.failure?.code).toBe('INTERRUPTED');
      expect(first.failure?.fix).toContain(path);
      expect(first.result.partial).toBeDefined();
      expect(lines(path)).toHaveLength(1 + k);

      const resumed = await evaluate({ ...OPTIONS, journal: path });
      expect(resumed.failure).toBeUndefined();
      expect(resumed.journal?.resumed).toBe(k);
      expect(resumed.result.resumed).toBe(k);
      expect(lines(path)).toHaveLength(1 + ITEMS);
      expectClose(content(reference), content(resumed.result));
    });
  }

  it('a last line cut short by a kill is dropped, the file cut back, and its item scored again', async () => {
    const path = join(root, 'cut.jsonl');
    const stop = new AbortController();
    let done = 0;
    await evaluate({
      ...OPTIONS,
      journal: path,
      signal: stop.signal,
      onProgress: (p) => {
        if (p.done > 0 && ++done === 2) stop.abort();
      },
    });
    const whole = readFileSync(path, 'utf8');
    const [, , second] = whole.split('\n');
    // As a write killed midway leaves it: the line's first half and no newline.
    writeFileSync(path, whole.slice(0, whole.length - second.length - 1) + second.slice(0, second.length >> 1));

    const resumed = await evaluate({ ...OPTIONS, journal: path });
    expect(resumed.journal).toEqual({ path, resumed: 1, droppedPartialLine: true });
    const after = lines(path);
    expect(after).toHaveLength(1 + ITEMS);
    for (const l of after) JSON.parse(l); // every line whole again
    expectClose(content(reference), content(resumed.result));
  });

  it("resumes a journal of an earlier build, whose long-context keys were the tasks' places kind by kind; a key whose record is another task is scored again", async () => {
    const whole = lines(join(root, 'whole.jsonl'));
    // Before 2026-12-07: needles first, then variable tracking, keyed long_context/<place>.
    const legacy = (swap: boolean) =>
      whole.map((l, i) => {
        if (i === 0) return l;
        const e = JSON.parse(l) as JournalEntry;
        if (e.kind !== 'long_context') return l;
        const place = e.record.subject === 'needle' ? 0 : 1;
        return JSON.stringify({ ...e, key: `long_context/${swap ? 1 - place : place}` });
      });
    const path = join(root, 'legacy.jsonl');
    writeFileSync(path, legacy(false).join('\n') + '\n');
    const resumed = await evaluate({ ...OPTIONS, journal: path });
    expect(resumed.journal).toEqual({ path, resumed: ITEMS, droppedPartialLine: false });
    expectClose(content(reference), content(resumed.result));

    const swapped = join(root, 'legacy-swapped.jsonl');
    writeFileSync(swapped, legacy(true).join('\n') + '\n');
    const rescored = await evaluate({ ...OPTIONS, journal: swapped });
    expect(rescored.journal).toEqual({ path: swapped, resumed: ITEMS - 2, droppedPartialLine: false });
    expectClose(content(reference), content(rescored.result));
  });

  it('refuses a journal of other settings (USAGE, exit 2), naming each difference and the fix; --fresh replaces it', async () => {
    const path = join(root, 'other.jsonl');
    const args = ['--subjects', 'world_religions', '--limit', '2', '--codec', 'int8', '--perplexity-tokens', '0', '--long-context', '0'];
    const kvtc = async (...extra: string[]) => {
      const io = memoryIO();
      const code = await main(['node', 'kvtc', 'evaluate', ...args, '--journal', path, '--json', '--quiet', ...extra], io);
      return { code, doc: JSON.parse(io.stdout.join('\n')) };
    };
    const a = await kvtc();
    expect(a.code).toBe(0);
    const before = readFileSync(path, 'utf8');
    expect(lines(path)).toHaveLength(1 + 2); // named with --journal: kept after a complete run

    const b = await kvtc('--shots', '5', '--seed', '3');
    expect(b.code).toBe(2);
    expect(b.doc.error.code).toBe('USAGE');
    expect(b.doc.error.message).toContain(path);
    expect(b.doc.error.message).toContain('shots: journal 0, this run 5');
    expect(b.doc.error.message).toContain('seed: journal 0, this run 3');
    expect(b.doc.error.fix).toMatch(/--fresh/);
    expect(b.doc.error.context.differences).toEqual(['seed: journal 0, this run 3', 'shots: journal 0, this run 5']);
    expect(readFileSync(path, 'utf8')).toBe(before); // untouched

    const c = await kvtc('--shots', '5', '--seed', '3', '--fresh');
    expect(c.code).toBe(0);
    expect(JSON.parse(lines(path)[0]).config).toMatchObject({ shots: 5, seed: 3 });
  });

  it('a --journal that is also the --report file is a usage error before any work', async () => {
    const file = join(root, 'same.md');
    const io = memoryIO();
    const code = await main(['node', 'kvtc', 'evaluate', '--subjects', 'marketing', '--report', file, '--journal', file, '--json'], io);
    expect(code).toBe(2);
    const doc = JSON.parse(io.stdout.join('\n'));
    expect(doc.error).toMatchObject({ code: 'USAGE', message: expect.stringContaining('also the --report file') });
    expect(existsSync(file)).toBe(false);
  });

  it('the journal kvtc puts beside --report is gone once the report is written', async () => {
    const dir = mkdtempSync(join(root, 'beside-'));
    const report = join(dir, 'r.md');
    const io = memoryIO();
    const code = await main(
      [
        'node',
        'kvtc',
        'evaluate',
        '--subjects',
        'marketing',
        '--limit',
        '2',
        '--codec',
        'int8',
        '--perplexity-tokens',
        '0',
        '--long-context',
        '0',
        '--report',
        report,
      ],
      io,
    );
    expect(code).toBe(0);
    expect(existsSync(report)).toBe(true);
    expect(existsSync(`${report}.journal.jsonl`)).toBe(false);
  });
});

describe('SIGTERM', () => {
  // A real process and a real signal. No bound on time (a hang is caught by the SIGKILL guard): the
  // property is that it stops partway, exits 130, keeps the journal, and a rerun completes from it.
  it('stops an evaluate run with 130, keeps the journal and says how to resume; the same command then finishes from it', async () => {
    const dir = mkdtempSync(join(root, 'term-'));
    const report = join(dir, 'r.md');
    const journal = `${report}.journal.jsonl`;
    const args = [
      'evaluate',
      '--subjects',
      'marketing',
      '--limit',
      '80',
      '--codec',
      'int8',
      '--perplexity-tokens',
      '0',
      '--long-context',
      '0',
      '--report',
      report,
    ];
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/kvtc-entry.ts', ...args], {
      cwd: REPO,
      env: { ...process.env, TSX_DISABLE_CACHE: '1' },
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    // Signalled once the journal holds two items: partway, whatever the machine's speed.
    const watch = setInterval(() => {
      if (existsSync(journal) && lines(journal).length >= 3) {
        clearInterval(watch);
        child.kill('SIGTERM');
      }
    }, 20);
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    clearInterval(watch);
    clearTimeout(guard);
    expect(code, stderr).toBe(130);
    expect(stderr).toContain(`run the same command again to resume`);
    const kept = lines(journal).length - 1;
    expect(kept).toBeGreaterThanOrEqual(2);
    expect(kept).toBeLessThan(80);

    const io = memoryIO();
    expect(await main(['node', 'kvtc', ...args, '--json'], io)).toBe(0);
    const doc = JSON.parse(io.stdout.join('\n'));
    expect(doc.n).toBe(80);
    expect(doc.partial).toBeNull();
    expect(io.stderr.join('\n')).toContain(`${kept} item(s) taken from an earlier run`);
    expect(existsSync(journal)).toBe(false);
  });
});

describe('EvaluationJournal', () => {
  const config = { shots: 0, model: { name: 'm', fingerprint: 'f' }, codecs: ['int8 sink 4 window 128'] };
  const entry = (i: number, logLik: number[]): JournalEntry => ({
    kind: 'mmlu',
    key: `mmlu/s/${i}`,
    record: {
      subject: 's',
      index: i,
      gold: 0,
      promptTokens: 9,
      truncated: 0,
      cacheTokens: 8,
      baseline: { logLik, pred: 0 },
      codecs: { int8: { logLik, pred: 0, compressedTokens: 0, bytes: 10, compressedBytes: 0 } },
    },
    seconds: { wall: 0.5, prefill: 0.1, scoring: 0.2, codecs: { int8: 0.1 } },
  });

  it('round-trips entries exactly, -Infinity included, across a reopen', async () => {
    const path = join(root, 'unit.jsonl');
    const j = await EvaluationJournal.open(path, config);
    const e0 = entry(0, [-1.25, -Infinity, -0.1 - 0.2, -3]);
    j.append(e0);
    j.append(entry(1, [-2, -2, -2, -2]));
    j.close();
    const again = await EvaluationJournal.open(path, {
      codecs: ['int8 sink 4 window 128'],
      model: { fingerprint: 'f', name: 'm' },
      shots: 0,
    });
    expect(again.size).toBe(2);
    expect(again.get('mmlu/s/0')).toEqual(e0);
    again.close();
  });

  it('a damaged line before the last one is DATA_INVALID naming the line; a file that is no journal too', async () => {
    const path = join(root, 'damaged.jsonl');
    const j = await EvaluationJournal.open(path, config);
    j.append(entry(0, [-1, -2, -3, -4]));
    j.close();
    appendFileSync(path, '{"kind":"mmlu","key"\n');
    appendFileSync(path, `${JSON.stringify(entry(1, [-1, -2, -3, -4]))}\n`);
    await expect(EvaluationJournal.open(path, config)).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringContaining('line 3'),
    });
    const other = join(root, 'notes.txt');
    writeFileSync(other, 'my notes\n');
    await expect(EvaluationJournal.open(other, config)).rejects.toMatchObject({
      code: 'DATA_INVALID',
      fix: expect.stringMatching(/--journal/),
    });
  });

  it('lists differences by setting path, nested ones included', () => {
    expect(configDifferences({ a: 1, m: { x: 'p', y: 2 }, l: [1, 2] }, { a: 1, m: { x: 'q', y: 2 }, l: [1, 3], n: true })).toEqual([
      'l: journal [1,2], this run [1,3]',
      'm.x: journal "p", this run "q"',
      'n: journal (unset), this run true',
    ]);
    expect(configHash({ a: 1, b: { c: 2 } })).toBe(configHash({ b: { c: 2 }, a: 1 }));
  });
});

import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvtcError } from '../../src/errors.js';
import { listSubjects, loadSubject, parseCsv, parseMmluCsv } from '../../src/evaluate/mmlu.js';
import { MMLU_DIR } from '../../src/paths.js';
import { MMLU_SUBJECTS } from '../../src/evaluate/subjects.js';

const fields = (text: string) => parseCsv(text).map((r) => r.fields);

describe('parseCsv (RFC 4180)', () => {
  it.each([
    [
      'plain fields',
      'a,b,c\n1,2,3\n',
      [
        ['a', 'b', 'c'],
        ['1', '2', '3'],
      ],
    ],
    [
      'no trailing newline',
      'a,b\n1,2',
      [
        ['a', 'b'],
        ['1', '2'],
      ],
    ],
    [
      'CRLF records',
      'a,b\r\n1,2\r\n',
      [
        ['a', 'b'],
        ['1', '2'],
      ],
    ],
    ['comma inside quotes', '"x, y",z\n', [['x, y', 'z']]],
    ['doubled quotes', '"say ""hi""",b\n', [['say "hi"', 'b']]],
    ['newline inside quotes', '"line1\nline2",b\n', [['line1\nline2', 'b']]],
    ['CRLF inside quotes is kept', '"l1\r\nl2",b\r\n', [['l1\r\nl2', 'b']]],
    ['empty fields', ',,\n', [['', '', '']]],
    ['empty quoted field', '"",a\n', [['', 'a']]],
    ['blank lines are skipped', 'a\n\n\nb\n', [['a'], ['b']]],
    ['BOM is dropped', '\ufeffa,b\n', [['a', 'b']]],
    ['lone quote in an unquoted field is literal', 'a 5" pipe,b\n', [['a 5" pipe', 'b']]],
  ])('%s', (_name, text, expected) => {
    expect(fields(text)).toEqual(expected);
  });

  it('records the line each record starts on, counting newlines inside quotes', () => {
    const recs = parseCsv('h\n"a\nb\nc"\nd\r\ne\n');
    expect(recs.map((r) => r.line)).toEqual([1, 2, 5, 6]);
  });

  it('rejects an unterminated quote with file:line', () => {
    expect(() => parseCsv('a\n"open,b\n', 'x.csv')).toThrowError(/x\.csv:2: unterminated quoted field/);
  });

  it('rejects text after a closing quote', () => {
    expect(() => parseCsv('"a"b,c\n', 'x.csv')).toThrowError(/x\.csv:1: unexpected text after a closing quote/);
  });
});

describe('parseMmluCsv', () => {
  const header = 'question,choice0,choice1,choice2,choice3,answer\n';

  it('reads the header layout (answer 0-3)', () => {
    const qs = parseMmluCsv(`${header}"What, exactly?","a ""b""","c\nd",e,f,2\n`, 'h.csv', 'demo');
    expect(qs).toEqual([{ subject: 'demo', question: 'What, exactly?', choices: ['a "b"', 'c\nd', 'e', 'f'], answer: 2, line: 2 }]);
  });

  it('reads the original headerless layout (answer A-D)', () => {
    const qs = parseMmluCsv('Q1,a,b,c,d,D\r\n"Q2, with comma",a,b,c,d,A\r\n', 'o.csv', 'demo');
    expect(qs.map((q) => [q.question, q.answer, q.line])).toEqual([
      ['Q1', 3, 1],
      ['Q2, with comma', 0, 2],
    ]);
  });

  it('names the file and line of a row with the wrong column count', () => {
    const text = `${header}ok,a,b,c,d,1\n"multi\nline",a,b,c,d,0\nunquoted, comma,a,b,c,d,0\n`;
    let err: unknown;
    try {
      parseMmluCsv(text, 'bad.csv', 'demo');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvtcError);
    expect((err as KvtcError).code).toBe('DATA_INVALID');
    expect((err as KvtcError).message).toBe('bad.csv:5: expected 6 columns (question, 4 choices, answer), found 7');
    expect((err as KvtcError).context).toMatchObject({ file: 'bad.csv', line: 5, columns: 7 });
  });

  it('names the file and line of a bad answer', () => {
    expect(() => parseMmluCsv(`${header}q,a,b,c,d,4\n`, 'ans.csv', 'demo')).toThrowError('ans.csv:2: answer must be 0-3 or A-D, got "4"');
    expect(() => parseMmluCsv('q,a,b,c,d,E\n', 'ans.csv', 'demo')).toThrowError(/ans\.csv:1: answer must be/);
  });
});

describe('bundled MMLU (data/mmlu)', () => {
  it('has all 57 subjects with the published test counts (14,042 questions)', async () => {
    const subjects = await listSubjects(MMLU_DIR, 'test');
    expect(subjects).toEqual([...MMLU_SUBJECTS]);
    const counts: Record<string, number> = {};
    for (const s of subjects) counts[s] = (await loadSubject(MMLU_DIR, s, 'test')).length;
    expect(Object.values(counts).reduce((a, b) => a + b, 0)).toBe(14_042);
    expect(counts).toMatchObject({
      abstract_algebra: 100,
      anatomy: 135,
      high_school_psychology: 545,
      miscellaneous: 783,
      moral_scenarios: 895,
      professional_law: 1534,
      professional_psychology: 612,
    });
  });

  it('has 5 dev examples for every subject', async () => {
    expect(await listSubjects(MMLU_DIR, 'dev')).toEqual([...MMLU_SUBJECTS]);
    for (const s of MMLU_SUBJECTS) expect((await loadSubject(MMLU_DIR, s, 'dev')).length).toBe(5);
  });

  it('reads quoted commas and embedded newlines in real rows', async () => {
    const aa = await loadSubject(MMLU_DIR, 'abstract_algebra', 'test');
    expect(aa[2].choices).toEqual(['0', '1', '0,1', '0,4']);
    expect(aa[2].answer).toBe(3);
    const nutrition = await loadSubject(MMLU_DIR, 'nutrition', 'test');
    expect(nutrition[0].question.endsWith('?\n')).toBe(true);
  });
});

describe('loadSubject / listSubjects errors', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kvtc-mmlu-'));
    await mkdir(join(dir, 'test'));
    await writeFile(join(dir, 'test', 'demo_test.csv'), 'q,a,b,c,d,B\nq2,a,b,c\n');
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('reports a malformed file with its path and line', async () => {
    await expect(loadSubject(dir, 'demo', 'test')).rejects.toThrowError(`${join(dir, 'test', 'demo_test.csv')}:2: expected 6 columns`);
  });

  it('reports a missing dev split and how to avoid it', async () => {
    const err = await loadSubject(dir, 'demo', 'dev').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KvtcError);
    expect((err as KvtcError).code).toBe('DATA_INVALID');
    expect((err as KvtcError).fix).toMatch(/--shots 0/);
  });

  it('lists subjects and reports a missing split folder', async () => {
    expect(await listSubjects(dir)).toEqual(['demo']);
    await expect(listSubjects(dir, 'dev')).rejects.toMatchObject({ code: 'DATA_INVALID' });
  });
});

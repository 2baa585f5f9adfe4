/** --data: files that are not UTF-8 text in a directory are skipped and listed (--strict-data: an error); Ctrl-C while tokenizing. */
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { readCalibrationTokens } from '../../src/calibrate/sequences.js';
import { loadTokenizer, type ModelTokenizer } from '../../src/model/tokenizer.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { REPO } from '../helpers/process.js';
import { kvtc, tempDir } from '../model/helpers.js';

let tok: ModelTokenizer;
let root: string;
/** A directory: the bad files first (by name), then eight real documents. */
let mixed: string;
const latin1 = Buffer.from('Le café est très chaud; la crème brûlée aussi.\n'.repeat(50), 'latin1');
const cp1252 = Buffer.concat([
  Buffer.from('He said '),
  Buffer.from([0x93]),
  Buffer.from('hello'),
  Buffer.from([0x94, 0x20, 0x97]),
  Buffer.from(' and left.\n'),
]);
const gz = gzipSync(Buffer.from('compressed, not text '.repeat(400)));

beforeAll(async () => {
  tok = await loadTokenizer(DEFAULT_MODEL_DIR);
  root = tempDir('kvtc-data-');
  mixed = join(root, 'mixed');
  mkdirSync(mixed);
  writeFileSync(join(mixed, '0-archive.txt'), gz);
  writeFileSync(join(mixed, '1-french.txt'), latin1);
  writeFileSync(join(mixed, '2-quotes.txt'), cp1252);
  for (const n of readdirSync(DEFAULT_CALIBRATION_DIR)
    .filter((x) => x.startsWith('inaugural-'))
    .sort()
    .slice(0, 8))
    copyFileSync(join(DEFAULT_CALIBRATION_DIR, n), join(mixed, n));
});

describe('a --data directory with files that are not UTF-8 text', () => {
  it('skips them, says what each is with a fitting fix, and tokenizes the rest as if they were not there', async () => {
    const d = await readCalibrationTokens([mixed], tok, { fitTokens: 2048, heldoutTokens: 1024 });
    expect(d.skipped.map((s) => [s.file.split('/').pop(), s.kind])).toEqual([
      ['0-archive.txt', 'binary'],
      ['1-french.txt', 'latin1'],
      ['2-quotes.txt', 'windows-1252'],
    ]);
    const [bin, lat, win] = d.skipped;
    expect(bin.message).toMatch(/0-archive\.txt: is binary, not text \(a NUL byte at offset \d+\)/);
    expect(bin.fix).toMatch(/Remove it .*point --data at the text files/);
    expect(bin.fix).not.toMatch(/iconv/);
    expect(lat.message).toMatch(/1-french\.txt: is not valid UTF-8 \(byte 0xe9 at offset 6\); it reads as Latin-1 text/);
    expect(lat.fix).toMatch(/iconv -f latin1 -t utf-8 .*1-french\.txt/);
    expect(win.fix).toMatch(/iconv -f windows-1252 -t utf-8/);
    expect(d.sources.every((s) => s.name.startsWith('inaugural-'))).toBe(true);
    const clean = join(root, 'clean');
    mkdirSync(clean);
    for (const n of readdirSync(mixed).filter((x) => x.startsWith('inaugural-'))) copyFileSync(join(mixed, n), join(clean, n));
    const ref = await readCalibrationTokens([clean], tok, { fitTokens: 2048, heldoutTokens: 1024 });
    expect(d.tokens).toEqual(ref.tokens);
    expect(d.sources.map((s) => s.sha256)).toEqual(ref.sources.map((s) => s.sha256));
  });

  it('with strict (--strict-data), stops at the first one', async () => {
    await expect(readCalibrationTokens([mixed], tok, { fitTokens: 2048, heldoutTokens: 1024, strict: true })).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(/0-archive\.txt: is binary, not text/),
      fix: expect.stringMatching(/--strict-data/),
    });
  });

  it('a file given directly that is not UTF-8 stays an error', async () => {
    await expect(readCalibrationTokens([join(mixed, '1-french.txt')], tok, { fitTokens: 2048, heldoutTokens: 1024 })).rejects.toMatchObject(
      {
        code: 'DATA_INVALID',
        message: expect.stringMatching(/reads as Latin-1 text/),
        fix: expect.stringMatching(/iconv -f latin1/),
      },
    );
    await expect(
      readCalibrationTokens([join(mixed, '0-archive.txt')], tok, { fitTokens: 2048, heldoutTokens: 1024 }),
    ).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(/is binary, not text/),
    });
  });

  it('a directory with nothing usable is an error that lists what it skipped', async () => {
    const bad = join(root, 'bad');
    mkdirSync(bad);
    writeFileSync(join(bad, 'a.txt'), gz);
    writeFileSync(join(bad, 'b.txt'), latin1);
    await expect(readCalibrationTokens([bad], tok, { fitTokens: 2048, heldoutTokens: 1024 })).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(/no UTF-8 text in the calibration data: .*a\.txt: is binary.*b\.txt: is not valid UTF-8/),
    });
  });

  it('kvtc calibrate lists the skipped files (stderr warnings, skipped_data in --json); --strict-data fails', async () => {
    const out = join(root, 'profile');
    const r = await kvtc(
      'calibrate',
      '--data',
      mixed,
      '--tokens',
      '2048',
      '--heldout',
      '1024',
      '--report-tokens',
      '1024',
      '--grouping',
      'layer',
      '--out',
      out,
      '--json',
    );
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.skipped_data.map((s: { kind: string }) => s.kind)).toEqual(['binary', 'latin1', 'windows-1252']);
    expect(r.stderr).toMatch(/warning: skipped .*0-archive\.txt: is binary, not text.*\n\s+fix: Remove it/);
    expect(r.stderr).toMatch(/warning: skipped .*1-french\.txt: .*Latin-1.*\n\s+fix: .*iconv -f latin1/);
    const strict = await kvtc(
      'calibrate',
      '--data',
      mixed,
      '--tokens',
      '2048',
      '--heldout',
      '1024',
      '--report-tokens',
      '1024',
      '--grouping',
      'layer',
      '--out',
      join(root, 'p2'),
      '--strict-data',
      '--json',
    );
    expect(strict.code).toBe(1);
    expect(JSON.parse(strict.stdout).error).toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(/0-archive\.txt: is binary, not text/),
    });
  });
});

describe('Ctrl-C while calibration text is tokenized', () => {
  it('exits 130 with INTERRUPTED, before the 4 MB are tokenized, writing nothing', async () => {
    // The checkpoint granularity (no chunk after the abort) is tested in-process in sequences.test.ts;
    // here the real signal path. No time bound: a hang is caught by the SIGKILL guard below.
    const big = join(root, 'big.txt');
    const para = readdirSync(DEFAULT_CALIBRATION_DIR)
      .filter((x) => x.startsWith('inaugural-'))
      .map((n) => Buffer.from(`${readFileSync(join(DEFAULT_CALIBRATION_DIR, n), 'utf8')}\n\n`));
    const parts: Buffer[] = [];
    for (let n = 0; n < 4_000_000;) {
      for (const p of para) {
        parts.push(p);
        n += p.length;
      }
    }
    writeFileSync(big, Buffer.concat(parts));
    // --tokens far above the file: unless interrupted, it would tokenize all 4 MB.
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'test/helpers/kvtc-entry.ts',
        'calibrate',
        '--data',
        big,
        '--tokens',
        '5000000',
        '--out',
        join(root, 'p3'),
        '--json',
      ],
      { cwd: REPO, env: { ...process.env, TSX_DISABLE_CACHE: '1' } },
    );
    let stdout = '';
    let stderr = '';
    let sent = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      // At once: tokenizing the whole file takes seconds, so the signal lands while it runs.
      if (!sent && /reading calibration text/.test(stderr)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const kill = setTimeout(() => child.kill('SIGKILL'), 90_000);
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    clearTimeout(kill);
    expect(code, stderr).toBe(130);
    expect(sent).toBe(true);
    expect(existsSync(join(root, 'p3'))).toBe(false);
    expect(JSON.parse(stdout).error.code).toBe('INTERRUPTED');
  });
});

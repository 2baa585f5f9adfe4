import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { memoryIO } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { createCodecs } from '../../src/evaluate/codecs.js';
import { runEvaluation } from '../../src/evaluate/run.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, MMLU_DIR } from '../../src/paths.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');
const tempDir = () => mkdtempSync(join(tmpdir(), 'kvtc-evaluate-'));

async function kvtc(...args: string[]) {
  const io = memoryIO();
  const code = await main(['node', 'kvtc', 'evaluate', ...args], io);
  return { code, stdout: io.stdout.join('\n'), stderr: io.stderr.join('\n') };
}

describe('kvtc evaluate', () => {
  it('--json has the acceptance fields, per codec and per subject', async () => {
    const report = join(tempDir(), 'sub', 'report.md');
    const r = await kvtc(
      '--profile',
      PROFILE,
      '--subjects',
      'high_school_geography',
      '--limit',
      '5',
      '--perplexity-tokens',
      '512',
      '--report',
      report,
      '--json',
    );
    // stderr carries only progress lines (plain, since it is not a terminal); stdout the result.
    expect(r.stderr).toMatch(/^(\[kvtc\] [^\n]*(\n|$))*$/);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.n).toBe(5);
    expect(j.compressed.codec).toBe('kvtc');
    for (const k of ['accuracy', 'stderr']) {
      expect(typeof j.baseline[k]).toBe('number');
      expect(typeof j.compressed[k]).toBe('number');
    }
    expect(j.delta_points).toBeCloseTo(100 * (j.compressed.accuracy - j.baseline.accuracy), 10);
    expect(j.delta_ci95).toHaveLength(2);
    expect(j.delta_ci95[0]).toBeLessThanOrEqual(j.delta_points);
    expect(j.delta_ci95[1]).toBeGreaterThanOrEqual(j.delta_points);
    expect(j.agreement).toBeGreaterThanOrEqual(0);
    expect(j.agreement).toBeLessThanOrEqual(1);
    expect(j.kl).toBeGreaterThanOrEqual(0);
    expect(j.ratio).toBeGreaterThan(0);
    expect(j.ratio_compressed).toBeGreaterThan(5);
    expect(Object.keys(j.codecs)).toEqual(['kvtc', 'fp16', 'int8', 'int4', 'kivi2']);
    expect(j.codecs.kvtc).toMatchObject({ sink: 4, recent: 128 });
    expect(j.codecs.kivi2.recent).toBe(128);
    expect(j.subjects.high_school_geography.n).toBe(5);
    expect(j.groups.social_sciences.n).toBe(5);
    expect(j.perplexity).toMatchObject({ windows: 1, window: 512 });
    expect(j.questions_per_second).toBeGreaterThan(0);
    const md = readFileSync(report, 'utf8');
    expect(md).toMatch(/^# kvtc evaluate: stories260k/);
    expect(md).toMatch(/\| kvtc \| /);
    expect(md).toMatch(/## Perplexity/);
  });

  it('prints the table, the not-compressed note and questions/s', async () => {
    const r = await kvtc('--subjects', 'high_school_geography', '--limit', '8', '--codec', 'kvtc,kivi2', '--perplexity-tokens', '0');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/uncompressed\s+\d+\.\d ± \d+\.\d/);
    expect(r.stdout).toMatch(/^kvtc\s+\d+\.\d ± /m);
    // Three of these prompts leave kivi2 nothing to quantize beyond its 128 fp16 tokens.
    expect(r.stdout).toMatch(/^note: kivi2: 3 of 8 questions were not compressed at all .*on the 5 compressed questions alone: Δ/m);
    expect(r.stdout).toMatch(/^kivi2 .* 3\/8$/m);
    expect(r.stdout).toMatch(/questions\/(s|min|h)\b/);
    expect(r.stdout).not.toMatch(/Perplexity/);
  });

  it('an unknown subject lists the valid ones', async () => {
    const r = await kvtc('--subjects', 'high_school_geograpy', '--json');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Unknown MMLU subject "high_school_geograpy": did you mean "high_school_geography"\?/);
    expect(r.stderr).toMatch(/abstract_algebra, anatomy, astronomy/);
  });

  it('bad option values name the option', async () => {
    const r = await kvtc('--codec', 'zstd', '--limit', '0');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--codec .*unknown codec "zstd"; valid: kvtc, identity, dynamo, fp16, int8, int4, kivi2/);
    expect(r.stderr).toMatch(/--limit "0": must be a whole number ≥ 1/);
  });

  it('a profile made for another model is refused', async () => {
    const dir = join(tempDir(), 'other');
    cpSync(PROFILE, dir, { recursive: true });
    const file = join(dir, 'kvtc-profile.json');
    const m = JSON.parse(readFileSync(file, 'utf8'));
    m.model.name = 'some-other-model';
    m.model.fingerprint.id = '0123456789abcdef';
    writeFileSync(file, JSON.stringify(m, null, 2));
    const r = await kvtc('--profile', dir, '--limit', '1', '--subjects', 'marketing');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/PROFILE_MISMATCH.*calibrated for model some-other-model \(fingerprint 0123456789abcdef\).*stories260k/);
    expect(r.stderr).toMatch(/fix: .*kvtc calibrate --model/);
  });

  it('a missing --profile is an error, not a silent baseline-only run', async () => {
    const r = await kvtc('--profile', join(tempDir(), 'nope'), '--limit', '1');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/PROFILE_INVALID.*nope does not exist/);
  });

  // --shots 5 with a missing dev split: 'evaluate: bad MMLU data' below (the CLI has no MMLU-dir option).
  it('--shots 6 is a usage error that says the dev split has 5 examples and suggests 0 or 5', async () => {
    const r = await kvtc('--shots', '6', '--json');
    expect(r.code).toBe(2);
    const doc = JSON.parse(r.stdout);
    expect(doc.error).toMatchObject({
      code: 'USAGE',
      message: "--shots 6: MMLU's dev split has 5 examples per subject",
      fix: 'Use --shots 0 (the harness default) or 5.',
    });
    const plain = await kvtc('--shots', '6');
    expect(plain.code).toBe(2);
    expect(plain.stdout).toBe('');
    expect(plain.stderr).toMatch(/--shots 6: MMLU's dev split has 5 examples per subject/);
    expect(plain.stderr).toMatch(/--shots 0 \(the harness default\) or 5/);
  });

  it('--max-drop: exit 3 when kvtc drops more, 0 when it does not', async () => {
    // On the first 3 world_religions questions the bundled 20x profile flips one right answer (−33.3 points).
    const args = ['--subjects', 'world_religions', '--limit', '3', '--codec', 'kvtc', '--perplexity-tokens', '0'];
    const fail = await kvtc(...args, '--max-drop', '1.0', '--json');
    expect(fail.code).toBe(3);
    expect(fail.stderr).toMatch(/THRESHOLD_EXCEEDED.*kvtc loses 33\.33 accuracy points on 3 questions.*more than --max-drop 1/);
    // One document, the success shape plus "error".
    const doc = JSON.parse(fail.stdout);
    expect(doc.error.code).toBe('THRESHOLD_EXCEEDED');
    expect(doc).toMatchObject({ n: 3, max_drop: { codec: 'kvtc', passed: false } });
    expect(doc.delta_points).toBeCloseTo(-100 / 3, 10);
    const ok = JSON.parse((await kvtc(...args, '--max-drop', '40', '--json')).stdout);
    expect(
      Object.keys(doc)
        .filter((k) => k !== 'error')
        .sort(),
    ).toEqual(Object.keys(ok).sort());
    const pass = await kvtc(...args, '--max-drop', '40');
    expect(pass.code).toBe(0);
    expect(pass.stdout).toMatch(/--max-drop 40: passed \(kvtc drop 33\.33 points\)/);
  });

  it('the report is written atomically (no temp files left behind)', async () => {
    const dir = tempDir();
    const r = await kvtc(
      '--subjects',
      'marketing',
      '--limit',
      '2',
      '--codec',
      'int8',
      '--perplexity-tokens',
      '0',
      '--report',
      join(dir, 'r.md'),
    );
    expect(r.code).toBe(0);
    expect(readdirSync(dir)).toEqual(['r.md']);
    expect(readFileSync(join(dir, 'r.md'), 'utf8')).toMatch(/## Subjects/);
  });
});

describe('evaluate: bad MMLU data fails before the first forward pass', () => {
  /** An MMLU directory with only a test split: one good subject, plus `extra` files. */
  function mmluDir(extra: Record<string, string> = {}): string {
    const dir = tempDir();
    mkdirSync(join(dir, 'test'));
    cpSync(join(MMLU_DIR, 'test', 'marketing_test.csv'), join(dir, 'test', 'marketing_test.csv'));
    for (const [name, text] of Object.entries(extra)) writeFileSync(join(dir, 'test', name), text);
    return dir;
  }
  const run = async (dir: string, subjects: string[], shots = 0) =>
    runEvaluation({
      runner: new ModelRunner(await loadModel(DEFAULT_MODEL_DIR)),
      subjects,
      limit: 2,
      shots,
      codecs: await createCodecs(['int8']),
      perplexityTokens: 0,
      mmluDir: dir,
    });

  it('--shots 5 without a dev split names the missing file and suggests --shots 0', async () => {
    const dir = mmluDir();
    await expect(run(dir, ['marketing'], 5)).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(/MMLU dev split for "marketing" not found: .*dev\/marketing_dev\.csv/),
      fix: expect.stringMatching(/--shots 0/),
    });
    expect(readdirSync(dir)).toEqual(['test']);
  });

  it('a malformed CSV row reports the file and line', async () => {
    const dir = mmluDir({
      'sociology_test.csv': 'question,choice0,choice1,choice2,choice3,answer\nQ1,a,b,c,d,0\nQ2 has, a comma,a,b,c,d,1\n',
    });
    await expect(run(dir, ['marketing', 'sociology'])).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(/sociology_test\.csv:3: expected 6 columns .*found 7/),
    });
  });
});

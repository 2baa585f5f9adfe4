import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { calibrate, type CalibrateResult } from '../../src/calibrate/calibrate.js';
import { GraphBuilder } from '../../src/onnx/builder.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { readProfile } from '../../src/profile/io.js';
import { FIXTURE, kvtc, tempDir } from '../model/helpers.js';

const SMALL = ['--tokens', '2048', '--heldout', '1024', '--report-tokens', '1024', '--grouping', 'layer'];

describe('calibrate on the bundled model', () => {
  let result: CalibrateResult;
  let out: string;
  let elapsed: number;
  beforeAll(async () => {
    out = join(tempDir('kvtc-cal-'), 'p');
    const t0 = performance.now();
    result = await calibrate({
      modelDir: DEFAULT_MODEL_DIR, data: [DEFAULT_CALIBRATION_DIR], ratios: [8, 16, 20], tokens: 8192, heldout: 2048, report: 2048,
      sink: 4, window: 128, grouping: 'layer', chunk: 256, seed: 0, device: 'cpu', out, force: false,
    });
    elapsed = (performance.now() - t0) / 1000;
  });

  it('writes one profile per ratio from one capture, each within 10% of its target on held-out text', () => {
    expect(result.profiles.map((p) => p.ratio_target)).toEqual([8, 16, 20]);
    for (const p of result.profiles) {
      expect(existsSync(join(p.profile, 'kvtc-profile.json'))).toBe(true);
      expect(Math.abs(p.ratio_compressed / p.ratio_target - 1)).toBeLessThan(0.1);
      expect(p.ratio_blob).toBeLessThan(p.ratio_compressed);
    }
  });

  it('reconstruction error falls monotonically as the target ratio falls, per layer, keys and values', () => {
    const [r8, r16, r20] = result.profiles;
    for (let l = 0; l < 5; l++) {
      expect(r8.rel_error.key_per_layer[l]).toBeLessThan(r16.rel_error.key_per_layer[l]);
      expect(r16.rel_error.key_per_layer[l]).toBeLessThanOrEqual(r20.rel_error.key_per_layer[l]);
      expect(r8.rel_error.value_per_layer[l]).toBeLessThan(r16.rel_error.value_per_layer[l]);
      expect(r16.rel_error.value_per_layer[l]).toBeLessThanOrEqual(r20.rel_error.value_per_layer[l]);
    }
  });

  it('reports where the time goes: every stage took time, and the wall-clock stages add up to the total', () => {
    const s = result.seconds;
    for (const k of ['load', 'tokenize', 'forward', 'covariance', 'eigen', 'error_tables', 'fit_wall', 'allocation', 'measure', 'write', 'total']) {
      expect(s[k], k).toBeGreaterThan(0);
    }
    // Disjoint spans of the one calibrate() call: together no more than its total, and nothing large unaccounted.
    const wall = ['load', 'tokenize', 'forward', 'covariance', 'fit_wall', 'allocation', 'measure', 'write'].reduce((a, k) => a + s[k], 0);
    expect(wall).toBeLessThanOrEqual(s.total + 1e-6);
    expect(wall).toBeGreaterThan(0.9 * s.total);
    expect(s.total).toBeLessThanOrEqual(elapsed + 1e-6);
    // eigen and error_tables are CPU seconds summed over the bases, run on at most one worker per core.
    expect(s.eigen + s.error_tables).toBeLessThanOrEqual(s.fit_wall * availableParallelism() + 0.05);
  });
});

describe('the committed bundled profile', () => {
  it('is reproduced by re-running `kvtc calibrate` with the same seed and data', async () => {
    const out = join(tempDir('kvtc-repro-'), 'p');
    const r = await kvtc('calibrate', '--out', out, '--json');
    expect(r.code).toBe(0);
    const committed = await readProfile(join(DEFAULT_PROFILES_DIR, 'stories260k'));
    const fresh = await readProfile(out);
    const strip = (m: typeof committed.manifest) => ({ ...m, measured: undefined, tensors: undefined, profile_id: undefined });
    expect(strip(fresh.manifest)).toEqual(strip(committed.manifest));
    expect(fresh.manifest.measured.ratio_compressed).toBeCloseTo(committed.manifest.measured.ratio_compressed, 3);
    for (const [i, p] of committed.plans.entries()) {
      const q = fresh.plans[i];
      expect(q.groups).toEqual(p.groups);
      // Float sums may differ in the last bits across CPUs; bases agree up to sign-free tolerance.
      for (let j = 0; j < p.mean.length; j++) expect(Math.abs(q.mean[j] - p.mean[j])).toBeLessThan(1e-5);
      for (let j = 0; j < p.basis.length; j++) expect(Math.abs(Math.abs(q.basis[j]) - Math.abs(p.basis[j]))).toBeLessThan(1e-4);
    }
  });
});

describe('kvtc calibrate CLI', () => {
  it('with no arguments on a fresh clone succeeds: the committed profile is re-derived identically and left as it is', async () => {
    const dir = join(DEFAULT_PROFILES_DIR, 'stories260k');
    const before = readFileSync(join(dir, 'kvtc-profile.safetensors'));
    const r = await kvtc('calibrate', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).unchanged).toBe(true);
    expect(readFileSync(join(dir, 'kvtc-profile.safetensors')).equals(before)).toBe(true);
  });

  it('refuses to replace an existing, different profile without --force', async () => {
    const out = join(tempDir(), 'p');
    expect((await kvtc('calibrate', ...SMALL, '--out', out)).code).toBe(0);
    const before = readFileSync(join(out, 'kvtc-profile.json'), 'utf8');
    const r = await kvtc('calibrate', ...SMALL, '--ratio', '8', '--out', out);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('holds a profile of another model, data or settings');
    expect(readFileSync(join(out, 'kvtc-profile.json'), 'utf8')).toBe(before);
  });

  it('--json prints profile, ratio_target, ratio, rel_error, tokens and a seconds breakdown; validate and inspect accept the result', async () => {
    const out = join(tempDir(), 'p');
    const r = await kvtc('calibrate', ...SMALL, '--out', out, '--json');
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.profile).toBe(out);
    expect(j.ratio_target).toBe(20);
    expect(j.ratio).toBeGreaterThan(1);
    expect(j.rel_error.key).toBeGreaterThan(0);
    expect(j.rel_error.value).toBeGreaterThan(0);
    expect(j.tokens).toBeGreaterThanOrEqual(2048);
    expect(j.seconds.forward).toBeGreaterThan(0);
    const v = await kvtc('validate', out, '--model', DEFAULT_MODEL_DIR);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    const i = await kvtc('inspect', out);
    expect(i.code).toBe(0);
    expect(i.stdout).toContain('kept rank');
  });

  it('works on the third-party onnxruntime-genai fp16 export', async () => {
    const out = join(tempDir(), 'p');
    const r = await kvtc('calibrate', '--model', FIXTURE, '--data', join(DEFAULT_CALIBRATION_DIR, 'inaugural-1789-Washington.txt'), '--tokens', '1024', '--heldout', '512', '--report-tokens', '512', '--grouping', 'layer', '--out', out, '--json');
    expect(r.code, r.stderr).toBe(0);
    const p = await readProfile(out);
    expect(p.manifest.model.kv_dtype).toBe('float16');
    expect(p.manifest.model.layers).toBe(2);
    expect((await kvtc('validate', out, '--model', FIXTURE)).code).toBe(0);
    expect((await kvtc('validate', out, '--model', DEFAULT_MODEL_DIR)).code).toBe(1);
  });

  it.each([
    [['--ratio', '0.5'], 2, '--ratio'],
    [['--ratio', '100'], 2, '--ratio'],
    [['--ratio', 'abc'], 2, '--ratio'],
    [['--tokens', '-5'], 2, '--tokens'],
    [['--grouping', 'rows'], 2, '--grouping'],
    [['--data', '/nonexistent/text.txt'], 1, 'no such file'],
  ])('bad option %j exits %i naming the problem', async (args, code, needle) => {
    const out = join(tempDir(), 'p');
    const r = await kvtc('calibrate', ...SMALL, ...(args as string[]), '--out', out);
    expect(r.code).toBe(code);
    expect(r.stderr).toContain(needle);
    expect(existsSync(out)).toBe(false);
  });

  it('too little text says how many tokens are needed', async () => {
    const d = tempDir();
    writeFileSync(join(d, 'small.txt'), 'Once upon a time there was a cat. '.repeat(20));
    const r = await kvtc('calibrate', '--data', join(d, 'small.txt'), '--out', join(d, 'p'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/NOT_ENOUGH_TOKENS.*needs at least \d+ tokens/s);
    expect(existsSync(join(d, 'p'))).toBe(false);
  });

  it('non-UTF-8 data is refused with the byte offset', async () => {
    const d = tempDir();
    writeFileSync(join(d, 'latin1.txt'), Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0x6f, 0x6b]));
    const r = await kvtc('calibrate', '--data', join(d, 'latin1.txt'), '--out', join(d, 'p'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('not valid UTF-8');
  });

  it('writes into an existing directory without touching its other files; another model\'s profile there needs --force', async () => {
    const d = tempDir();
    const out = join(d, 'p');
    mkdirSync(out);
    writeFileSync(join(out, 'keep.txt'), 'mine');
    const r = await kvtc('calibrate', ...SMALL, '--out', out);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'keep.txt'), 'utf8')).toBe('mine');
    // A profile of another model (the fp16 fixture) in the way: refused before any work.
    const other = join(d, 'other');
    expect((await kvtc('calibrate', '--model', FIXTURE, ...SMALL, '--out', other)).code).toBe(0);
    const before = readFileSync(join(other, 'kvtc-profile.json'), 'utf8');
    const t0 = performance.now();
    const refused = await kvtc('calibrate', ...SMALL, '--out', other);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/OUTPUT_EXISTS.*another model[\s\S]*--force/);
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(readFileSync(join(other, 'kvtc-profile.json'), 'utf8')).toBe(before);
  });

  it('a model without KV outputs is refused', async () => {
    const d = tempDir();
    mkdirSync(join(d, 'onnx'));
    const g = new GraphBuilder('nokv');
    const ids = g.input('input_ids', 'int64', ['b', 's']);
    g.output(g.op('Cast', [ids], { to: 1 }), 'logits', 'float32', ['b', 's']);
    writeFileSync(join(d, 'onnx', 'model.onnx'), g.toModel());
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) writeFileSync(join(d, f), readFileSync(join(DEFAULT_MODEL_DIR, f)));
    const r = await kvtc('calibrate', '--model', d, ...SMALL, '--out', join(d, 'p'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/present|past_key_values/);
    expect(existsSync(join(d, 'p'))).toBe(false);
  });

  it('an interrupt (Ctrl-C) stops the run and writes nothing', async () => {
    const out = join(tempDir(), 'p');
    const ac = new AbortController();
    await expect(
      calibrate({
        modelDir: DEFAULT_MODEL_DIR, data: [DEFAULT_CALIBRATION_DIR], ratios: [20], tokens: 4096, heldout: 1024, sink: 4, window: 128,
        grouping: 'layer', chunk: 256, seed: 0, device: 'cpu', out, force: false, signal: ac.signal,
        onProgress: (e) => { if (e.stage.startsWith('capturing')) ac.abort(); },
      }),
    ).rejects.toMatchObject({ code: 'INTERRUPTED' });
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(join(out, '..'))).toEqual([]);
  });
});

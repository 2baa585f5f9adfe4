import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { calibrate, type CalibrateResult } from '../../src/calibrate/calibrate.js';
import { ModelRunner } from '../../src/model/runner.js';
import { GraphBuilder } from '../../src/onnx/builder.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, PACKAGE_ROOT } from '../../src/paths.js';
import { PROFILE_TOLERANCE } from '../../src/profile/equivalence.js';
import { readProfile } from '../../src/profile/read.js';
import { rng } from '../codec/rng.js';
import { FIXTURE, kvtc, tempDir } from '../model/helpers.js';
import { editTensorDir } from '../profile/helpers.js';

const SMALL = ['--tokens', '2048', '--heldout', '1024', '--report-tokens', '1024', '--grouping', 'layer'];

describe('calibrate on the bundled model', () => {
  let result: CalibrateResult;
  let out: string;
  beforeAll(async () => {
    out = join(tempDir('kvtc-cal-'), 'p');
    result = await calibrate({
      modelDir: DEFAULT_MODEL_DIR,
      data: [DEFAULT_CALIBRATION_DIR],
      ratios: [8, 16, 20],
      tokens: 8192,
      heldout: 2048,
      report: 2048,
      sink: 4,
      window: 128,
      grouping: 'layer',
      chunk: 256,
      seed: 0,
      device: 'cpu',
      out,
      force: false,
    });
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

  it('reports where the time goes: every stage is recorded, and the wall-clock stages are disjoint spans of the total', () => {
    // Structure only (the timer's arithmetic is tested with a fake clock in stage-times.test.ts):
    // no bound here depends on how fast this machine is.
    const s = result.seconds;
    for (const k of [
      'load',
      'tokenize',
      'forward',
      'covariance',
      'eigen',
      'error_tables',
      'fit_wall',
      'allocation',
      'measure',
      'write',
      'total',
    ]) {
      expect(s[k], k).toBeGreaterThan(0);
    }
    const wall = ['load', 'tokenize', 'forward', 'covariance', 'fit_wall', 'allocation', 'measure', 'write'].reduce((a, k) => a + s[k], 0);
    expect(wall).toBeLessThanOrEqual(s.total + 1e-6);
    // eigen and error_tables are CPU seconds summed over the bases, run on at most one worker per core.
    expect(s.eigen + s.error_tables).toBeLessThanOrEqual(s.fit_wall * availableParallelism() + 0.05);
  });
});

/** The committed profile's two files. */
const committedBytes = () => ({
  json: readFileSync(join(DEFAULT_PROFILES_DIR, 'stories260k', 'kvtc-profile.json')),
  tensors: readFileSync(join(DEFAULT_PROFILES_DIR, 'stories260k', 'kvtc-profile.safetensors')),
});
/** A working directory holding a copy of the committed profile where the no-argument calibrate writes it (kvtc-profiles/stories260k). */
function cloneWithProfile(): { cwd: string; dir: string } {
  const cwd = tempDir('kvtc-clone-');
  const dir = join(cwd, 'kvtc-profiles', 'stories260k');
  cpSync(join(DEFAULT_PROFILES_DIR, 'stories260k'), dir, { recursive: true });
  // A clone has its node_modules: from source, worker threads load tsx from the working directory (src/worker.ts).
  symlinkSync(join(PACKAGE_ROOT, 'node_modules'), join(cwd, 'node_modules'));
  return { cwd, dir };
}
const sameBytes = (dir: string, b: ReturnType<typeof committedBytes>) =>
  readFileSync(join(dir, 'kvtc-profile.json')).equals(b.json) && readFileSync(join(dir, 'kvtc-profile.safetensors')).equals(b.tensors);

/** Runs the CLI with `cwd` as the working directory (the default --out is kvtc-profiles/<model> under it). */
async function kvtcIn(cwd: string, ...args: string[]) {
  const here = process.cwd();
  process.chdir(cwd);
  try {
    return await kvtc(...args);
  } finally {
    process.chdir(here);
  }
}

/**
 * Multiplies every captured KV value by (1 + ε·u), u uniform in [−1, 1), seeded: another CPU's
 * ONNX Runtime kernels move the forward pass's last bits (~1e-6 relative); this simulates one.
 */
function perturbCaptures(eps: number, seed = 1) {
  const { uniform } = rng(seed);
  const prefill = ModelRunner.prototype.prefill;
  return vi.spyOn(ModelRunner.prototype, 'prefill').mockImplementation(async function (
    this: ModelRunner,
    ...args: Parameters<ModelRunner['prefill']>
  ) {
    const r = await prefill.apply(this, args);
    for (const a of [...r.cache.keys, ...r.cache.values])
      for (let i = 0; i < a.length; i++) a[i] = Math.fround(a[i] * (1 + eps * (2 * uniform() - 1)));
    return r;
  });
}

// The committed profile is never written by these tests: each works on a copy in a temporary clone
// layout, so a run on any CPU leaves the checkout as it was.
describe('the committed bundled profile', () => {
  it('the no-argument `kvtc calibrate` on a fresh clone leaves kvtc-profiles/stories260k byte for byte (identical on this CPU, or equivalent within tolerance on another)', async () => {
    const before = committedBytes();
    const { cwd, dir } = cloneWithProfile();
    const r = await kvtcIn(cwd, 'calibrate', '--json');
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(realpathSync(j.profile)).toBe(realpathSync(dir));
    expect(j.unchanged).toBe(true);
    expect(j.replaced).toBe(false);
    expect(j.profile_id).toBe(JSON.parse(before.json.toString()).profile_id);
    // On the CPU the profile was committed on the bytes are identical; elsewhere the floats agree within tolerance.
    if (j.equivalent)
      expect(Math.max(j.equivalent.tensors_max_rel_diff, j.equivalent.figures_max_rel_diff)).toBeLessThanOrEqual(PROFILE_TOLERANCE);
    expect(sameBytes(dir, before)).toBe(true);
  });

  it('a capture perturbed by 1e-6 relative (another CPU, simulated) re-derives an equivalent profile: the copy is kept byte for byte and the CLI says why', async () => {
    const before = committedBytes();
    const { cwd, dir } = cloneWithProfile();
    const spy = perturbCaptures(1e-6);
    let r: Awaited<ReturnType<typeof kvtc>>;
    let perturbed: number;
    try {
      r = await kvtcIn(cwd, 'calibrate');
    } finally {
      perturbed = spy.mock.calls.length;
      spy.mockRestore();
    }
    expect(r.code, r.stderr).toBe(0);
    expect(perturbed).toBeGreaterThan(0);
    const id = JSON.parse(before.json.toString()).profile_id;
    const m = r.stdout.match(
      new RegExp(
        `kept the existing profile ${id}: equivalent within tolerance 0\\.001 \\(same plans; tensors differ by at most (\\S+), figures by (\\S+) relative`,
      ),
    );
    expect(m, r.stdout).not.toBeNull();
    // The perturbation moved the floats (not identical), within the tolerance.
    expect(Number(m![1])).toBeGreaterThan(0);
    expect(Number(m![1])).toBeLessThanOrEqual(PROFILE_TOLERANCE);
    expect(Number(m![2])).toBeLessThanOrEqual(PROFILE_TOLERANCE);
    expect(sameBytes(dir, before)).toBe(true);
  });
});

describe('kvtc calibrate CLI', () => {
  it('is reproducible on one machine: two runs write identical bytes; a profile of the same job that really differs is replaced, saying how', async () => {
    const a = join(tempDir(), 'p');
    const b = join(tempDir(), 'p');
    expect((await kvtc('calibrate', ...SMALL, '--out', a)).code).toBe(0);
    expect((await kvtc('calibrate', ...SMALL, '--out', b)).code).toBe(0);
    for (const f of ['kvtc-profile.json', 'kvtc-profile.safetensors'])
      expect(readFileSync(join(a, f)).equals(readFileSync(join(b, f))), f).toBe(true);
    // 1% on one mean entry of plan 0 (re-signed, so it reads as a valid profile): beyond tolerance.
    editTensorDir(a, 'plan.0.mean', (v) => (v[3] += 0.01 * v.reduce((x, y) => Math.max(x, Math.abs(y)), 0)));
    const r = await kvtc('calibrate', ...SMALL, '--out', a);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /held an earlier run of this same calibration \(model, data, settings\): replaced \(plan 0 mean differs by 1\.00e-2 \(tolerance 0\.001\)\)\./,
    );
    for (const f of ['kvtc-profile.json', 'kvtc-profile.safetensors'])
      expect(readFileSync(join(a, f)).equals(readFileSync(join(b, f))), f).toBe(true);
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
    // `ratio` is --json's older name for the whole-blob ratio, kept beside ratio_blob; tuning tokens are printed once, as tuning_tokens (SMALL passes them as --heldout, the former name).
    expect(j.ratio).toBe(j.ratio_blob);
    expect(j.profiles[0].ratio).toBe(j.profiles[0].ratio_blob);
    expect(j.tuning_tokens).toBeGreaterThanOrEqual(1024);
    expect(j).not.toHaveProperty('heldout_tokens');
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
    const r = await kvtc(
      'calibrate',
      '--model',
      FIXTURE,
      '--data',
      join(DEFAULT_CALIBRATION_DIR, 'inaugural-1789-Washington.txt'),
      '--tokens',
      '1024',
      '--heldout',
      '512',
      '--report-tokens',
      '512',
      '--grouping',
      'layer',
      '--out',
      out,
      '--json',
    );
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

  it("writes into an existing directory without touching its other files; another model's profile there needs --force", async () => {
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
    // Refused before any work: no forward pass runs.
    const forward = vi.spyOn(ModelRunner.prototype, 'prefill');
    let refused: Awaited<ReturnType<typeof kvtc>>;
    try {
      refused = await kvtc('calibrate', ...SMALL, '--out', other);
      expect(forward).not.toHaveBeenCalled();
    } finally {
      forward.mockRestore();
    }
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/OUTPUT_EXISTS.*another model[\s\S]*--force/);
    expect(readFileSync(join(other, 'kvtc-profile.json'), 'utf8')).toBe(before);
  });

  it('a model without KV outputs is refused', async () => {
    const d = tempDir();
    mkdirSync(join(d, 'onnx'));
    const g = new GraphBuilder('nokv');
    const ids = g.input('input_ids', 'int64', ['b', 's']);
    g.output(g.op('Cast', [ids], { to: 1 }), 'logits', 'float32', ['b', 's']);
    writeFileSync(join(d, 'onnx', 'model.onnx'), g.toModel());
    for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json'])
      writeFileSync(join(d, f), readFileSync(join(DEFAULT_MODEL_DIR, f)));
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
        modelDir: DEFAULT_MODEL_DIR,
        data: [DEFAULT_CALIBRATION_DIR],
        ratios: [20],
        tokens: 4096,
        heldout: 1024,
        sink: 4,
        window: 128,
        grouping: 'layer',
        chunk: 256,
        seed: 0,
        device: 'cpu',
        out,
        force: false,
        signal: ac.signal,
        onProgress: (e) => {
          if (e.stage.startsWith('capturing')) ac.abort();
        },
      }),
    ).rejects.toMatchObject({ code: 'INTERRUPTED' });
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(join(out, '..'))).toEqual([]);
  });
});

import { createHash } from 'node:crypto';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { readProfile } from '../../src/profile/io.js';
import { validateProfile } from '../../src/profile/validate.js';
import { kvtc, tempDir } from '../model/helpers.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');

/** A writable copy of the bundled profile, with `edit` applied to its manifest. */
function copyWith(edit?: (m: Record<string, any>) => void): string {
  const d = join(tempDir('kvtc-prof-'), 'p');
  cpSync(PROFILE, d, { recursive: true });
  if (edit) {
    const f = join(d, 'kvtc-profile.json');
    const m = JSON.parse(readFileSync(f, 'utf8'));
    edit(m);
    writeFileSync(f, JSON.stringify(m));
  }
  return d;
}

/** Overwrites element 0 of tensor `name` with `value`, then re-signs the manifest's sha256 so only the content checks can catch it. */
function corruptTensor(d: string, name: string, value: number): void {
  const f = join(d, 'kvtc-profile.safetensors');
  const b = readFileSync(f);
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString());
  b.writeFloatLE(value, 8 + n + h[name].data_offsets[0]);
  writeFileSync(f, b);
  const m = JSON.parse(readFileSync(join(d, 'kvtc-profile.json'), 'utf8'));
  m.tensors.sha256 = createHash('sha256').update(b).digest('hex');
  writeFileSync(join(d, 'kvtc-profile.json'), JSON.stringify(m));
}

describe('reading profiles', () => {
  it('reads the bundled profile: plans cover every (layer, kind), bases match their manifest shapes', async () => {
    const p = await readProfile(PROFILE);
    expect(p.plans).toHaveLength(10);
    for (const plan of p.plans) expect(plan.basis.length).toBe(plan.dim * plan.rank);
  });

  it('a newer format version names the kvtc version that wrote it and says to upgrade', async () => {
    const d = copyWith((m) => {
      m.format_version = 2;
      m.producer.version = '0.9.0';
    });
    await expect(readProfile(d)).rejects.toMatchObject({ code: 'PROFILE_VERSION', message: expect.stringContaining('this kvtc reads version 1'), fix: expect.stringContaining('kvtc 0.9.0') });
  });

  it('an older format version says to re-calibrate', async () => {
    await expect(readProfile(copyWith((m) => (m.format_version = 0)))).rejects.toMatchObject({ code: 'PROFILE_VERSION', fix: expect.stringContaining('Re-calibrate') });
  });

  it('schema violations are listed as path: message', async () => {
    const d = copyWith((m) => {
      m.settings.sink = -1;
      delete m.model.kv_heads;
    });
    const err = await readProfile(d).catch((e) => e);
    expect(err.code).toBe('PROFILE_INVALID');
    expect(err.message).toContain('settings.sink');
    expect(err.message).toContain('model.kv_heads');
  });

  it('a modified tensor file fails its sha256 check', async () => {
    const d = copyWith();
    const f = join(d, 'kvtc-profile.safetensors');
    const b = readFileSync(f);
    b[b.length - 3] ^= 1;
    writeFileSync(f, b);
    await expect(readProfile(d)).rejects.toMatchObject({ code: 'PROFILE_INVALID', message: expect.stringContaining('sha256') });
  });

  it('not JSON, not a profile, missing directory: clear errors', async () => {
    const d = copyWith();
    writeFileSync(join(d, 'kvtc-profile.json'), '{ truncated');
    await expect(readProfile(d)).rejects.toMatchObject({ message: expect.stringContaining('not valid JSON') });
    await expect(readProfile(copyWith((m) => (m.format = 'something-else')))).rejects.toMatchObject({ message: expect.stringContaining('not a kvtc profile') });
    await expect(readProfile('/nonexistent/profile')).rejects.toMatchObject({ message: expect.stringContaining('does not exist') });
  });
});

describe('kvtc validate', () => {
  it('passes the bundled profile with its model (exit 0) and lists every check', async () => {
    const r = await kvtc('validate', PROFILE, '--model', DEFAULT_MODEL_DIR, '--json');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ok).toBe(true);
    expect(j.checks.map((c: { name: string }) => c.name)).toEqual(expect.arrayContaining(['schema', 'finite values', 'orthonormal bases', 'bit budget', 'model']));
  });

  it('a basis that is not orthonormal fails (exit 1)', async () => {
    const d = copyWith();
    corruptTensor(d, 'plan.0.basis', 3);
    const v = await validateProfile(d);
    expect(v.ok).toBe(false);
    expect(v.checks.find((c) => c.name === 'orthonormal bases')?.ok).toBe(false);
    const r = await kvtc('validate', d);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('✗ orthonormal bases');
  });

  it('a NaN in a mean fails the finite-values check', async () => {
    const d = copyWith();
    corruptTensor(d, 'plan.3.mean', Number.NaN);
    const v = await validateProfile(d);
    expect(v.checks.find((c) => c.name === 'finite values')).toMatchObject({ ok: false, detail: expect.stringContaining('plan 3 mean[0]') });
  });
});

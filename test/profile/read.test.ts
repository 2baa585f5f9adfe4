import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { orthonormalityError } from '../../src/profile/orthonormality.js';
import { readProfile } from '../../src/profile/read.js';
import { writeProfile } from '../../src/profile/write.js';
import { planBitsPerToken } from '../../src/codec/types.js';
import { validateProfile } from '../../src/profile/validate.js';
import { kvtc } from '../model/helpers.js';
import { copyWith, editTensorDir, PROFILE, TENSORS, tempDir } from './helpers.js';

/** Overwrites element 0 of tensor `name` with `value` and re-signs sha256, bytes and profile id, so only the content checks can catch it. */
function corruptTensor(d: string, name: string, value: number): void {
  editTensorDir(d, name, (v) => {
    v[0] = value;
  });
}

describe('reading profiles', () => {
  it('reads the bundled profile: one plan per (layer, kind), each as its manifest entry says, with orthonormal bases', async () => {
    const p = await readProfile(PROFILE);
    expect(p.plans.map((q) => `${q.kind}${q.layers.join(',')}`).sort()).toEqual(
      [0, 1, 2, 3, 4].flatMap((l) => [`key${l}`, `value${l}`]).sort(),
    );
    for (const [i, plan] of p.plans.entries()) {
      const m = p.manifest.plans[i];
      expect({
        kind: plan.kind,
        layers: plan.layers,
        dim: plan.dim,
        rank: plan.rank,
        groups: plan.groups,
        budgetBits: plan.budgetBits,
      }).toEqual({ kind: m.kind, layers: m.layers, dim: m.dim, rank: m.rank, groups: m.groups, budgetBits: m.budget_bits });
      expect(plan.dim).toBe(4 * 8); // one layer × 4 KV heads × head_dim 8
      expect([plan.mean.length, plan.basis.length, plan.variances.length, plan.lo.length, plan.hi.length]).toEqual([
        plan.dim,
        plan.dim * plan.rank,
        plan.rank,
        plan.rank,
        plan.rank,
      ]);
      expect(planBitsPerToken(plan)).toBe(m.bits_per_token);
      expect(m.bits_per_token).toBeLessThanOrEqual(m.budget_bits);
      // stored groups in order, without overlap (a gap is a dropped component), the last ending at rank
      for (const g of plan.groups) expect(g.start).toBeLessThan(g.end);
      for (let g = 1; g < plan.groups.length; g++) expect(plan.groups[g].start).toBeGreaterThanOrEqual(plan.groups[g - 1].end);
      expect(plan.groups.at(-1)?.end ?? 0).toBe(plan.rank);
      expect(orthonormalityError(plan.basis, plan.dim, plan.rank)).toBeLessThan(1e-5);
      for (let j = 1; j < plan.rank; j++) expect(plan.variances[j]).toBeLessThanOrEqual(plan.variances[j - 1]);
      for (let j = 0; j < plan.rank; j++) expect(plan.lo[j]).toBeLessThanOrEqual(plan.hi[j]);
    }
  });

  it('writing what was read gives back the same tensor bytes and the same plans, value for value', async () => {
    const p = await readProfile(PROFILE);
    const { profile_id: _id, tensors: _t, plans: _p, ...draft } = p.manifest;
    const out = join(tempDir(), 'copy');
    const written = await writeProfile(out, draft, p.plans);
    expect(written.profile_id).toBe(p.manifest.profile_id);
    expect(readFileSync(join(out, TENSORS)).equals(readFileSync(join(PROFILE, TENSORS)))).toBe(true);
    const back = await readProfile(out);
    expect(back.plans).toEqual(p.plans);
  });

  it('a newer format version names the kvtc version that wrote it and says to upgrade', async () => {
    const d = copyWith((m) => {
      (m as { format_version: number }).format_version = 4;
      m.producer.version = '0.9.0';
    });
    await expect(readProfile(d)).rejects.toMatchObject({
      code: 'PROFILE_VERSION',
      message: expect.stringContaining('this kvtc reads versions 1, 2, 3'),
      fix: expect.stringContaining('kvtc 0.9.0'),
    });
  });

  it('an older format version says to re-calibrate', async () => {
    await expect(readProfile(copyWith((m) => (m.format_version = 0)))).rejects.toMatchObject({
      code: 'PROFILE_VERSION',
      fix: expect.stringContaining('Re-calibrate'),
    });
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
    await expect(readProfile(copyWith((m) => (m.format = 'something-else')))).rejects.toMatchObject({
      message: expect.stringContaining('not a kvtc profile'),
    });
    await expect(readProfile('/nonexistent/profile')).rejects.toMatchObject({ message: expect.stringContaining('does not exist') });
  });
});

describe('kvtc validate', () => {
  it('passes the bundled profile with its model (exit 0) and lists every check', async () => {
    const r = await kvtc('validate', PROFILE, '--model', DEFAULT_MODEL_DIR, '--json');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ok).toBe(true);
    expect(j.checks.map((c: { name: string }) => c.name)).toEqual(
      expect.arrayContaining(['schema', 'finite values', 'orthonormal bases', 'bit budget', 'model']),
    );
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
    expect(v.checks.find((c) => c.name === 'finite values')).toMatchObject({
      ok: false,
      detail: expect.stringContaining('plan 3 mean[0]'),
    });
  });
});

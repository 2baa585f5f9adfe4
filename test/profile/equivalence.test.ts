// writeProfile over a profile of the same job (issue 22): identical or equivalent within tolerance
// leaves the files byte for byte as they were; a real difference is written, and says what it was.
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { BasisPlan } from '../../src/codec/types.js';
import { DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { compareProfiles, PROFILE_TOLERANCE } from '../../src/profile/equivalence.js';
import { readProfile } from '../../src/profile/read.js';
import { writeProfile, type ManifestDraft } from '../../src/profile/write.js';
import type { Manifest } from '../../src/profile/schema.js';
import { rng } from '../codec/rng.js';
import { MANIFEST, TENSORS, tempDir } from './helpers.js';

const COMMITTED = join(DEFAULT_PROFILES_DIR, 'stories260k');

/** A writable copy of the committed profile, its bytes, and its draft and plans to re-write it from. */
async function setup() {
  const dir = join(tempDir(), 'p');
  cpSync(COMMITTED, dir, { recursive: true });
  const p = await readProfile(dir);
  const { profile_id: _id, tensors: _t, plans: _p, ...draft } = p.manifest;
  const bytes = { manifest: readFileSync(join(dir, MANIFEST)), tensors: readFileSync(join(dir, TENSORS)) };
  const untouched = () =>
    readFileSync(join(dir, MANIFEST)).equals(bytes.manifest) && readFileSync(join(dir, TENSORS)).equals(bytes.tensors);
  return { dir, manifest: p.manifest, draft: structuredClone(draft) as ManifestDraft, plans: p.plans.map(clonePlan), untouched };
}

function clonePlan(p: BasisPlan): BasisPlan {
  return {
    ...p,
    groups: p.groups.map((g) => ({ ...g })),
    mean: p.mean.slice(),
    basis: p.basis.slice(),
    variances: p.variances.slice(),
    lo: p.lo.slice(),
    hi: p.hi.slice(),
  };
}

const maxAbs = (x: Float32Array) => x.reduce((a, v) => Math.max(a, Math.abs(v)), 0);

/** Relative noise of size `eps` on every float tensor, and `figEps` on the figures: what another CPU's rounding does. */
function jiggle(draft: ManifestDraft, plans: BasisPlan[], eps: number, figEps = eps, seed = 1): void {
  const r = rng(seed).uniform;
  const noise = (x: Float32Array, scale: number) => x.forEach((v, i) => (x[i] = v + eps * scale * (2 * r() - 1)));
  for (const p of plans) {
    noise(p.mean, maxAbs(p.mean));
    noise(p.basis, 1);
    noise(p.variances, maxAbs(p.variances));
    const range = Math.max(maxAbs(p.lo), maxAbs(p.hi));
    noise(p.lo, range);
    noise(p.hi, range);
  }
  const m = draft.measured;
  m.ratio_compressed *= 1 + figEps;
  m.rel_error.key = m.rel_error.key.map((x) => x * (1 - figEps));
  m.rel_error.value_mean *= 1 + figEps;
  for (const c of draft.calibration.grouping_candidates ?? []) c.key_mean *= 1 - figEps;
}

describe('writeProfile over a profile of the same calibration job', () => {
  it('identical: unchanged, nothing written', async () => {
    const s = await setup();
    const w = await writeProfile(s.dir, s.draft, s.plans);
    expect(w.unchanged).toBe(true);
    expect(w.equivalent).toBeUndefined();
    expect(s.untouched()).toBe(true);
  });

  it('floats and figures within tolerance (10x smaller noise): the existing profile is kept byte for byte and returned as it is on disk', async () => {
    const s = await setup();
    jiggle(s.draft, s.plans, PROFILE_TOLERANCE / 10);
    const w = await writeProfile(s.dir, s.draft, s.plans);
    expect(w.unchanged).toBe(true);
    expect(w.replaced).toBeUndefined();
    expect(w.profile_id).toBe(s.manifest.profile_id);
    expect(w.measured).toEqual(s.manifest.measured);
    expect(w.equivalent!.tolerance).toBe(PROFILE_TOLERANCE);
    expect(w.equivalent!.tensors_max_rel_diff).toBeGreaterThan(0);
    expect(w.equivalent!.tensors_max_rel_diff).toBeLessThanOrEqual(PROFILE_TOLERANCE / 10 + 1e-7);
    expect(w.equivalent!.figures_max_rel_diff).toBeCloseTo(PROFILE_TOLERANCE / 10, 6);
    expect(w.equivalent!.sign_flips).toBe(0);
    expect(s.untouched()).toBe(true);
  });

  it('a basis column that came back negated, with its static range mirrored, is the same profile', async () => {
    const s = await setup();
    const p = s.plans[0];
    const j = 3;
    for (let k = 0; k < p.dim; k++) p.basis[k * p.rank + j] = -p.basis[k * p.rank + j];
    [p.lo[j], p.hi[j]] = [-p.hi[j], -p.lo[j]];
    const w = await writeProfile(s.dir, s.draft, s.plans);
    expect(w.unchanged).toBe(true);
    expect(w.equivalent).toMatchObject({ sign_flips: 1, tensors_max_rel_diff: 0 });
    expect(s.untouched()).toBe(true);
  });

  // Each a real change: written, and the reason names the field.
  const changes: [string, (d: ManifestDraft, p: BasisPlan[]) => void, RegExp][] = [
    [
      'one mean entry 10x the tolerance away',
      (_d, p) => (p[0].mean[7] += 10 * PROFILE_TOLERANCE * maxAbs(p[0].mean)),
      /^plan 0 mean differs by 1\.00e-2 \(tolerance 0\.001\)$/,
    ],
    [
      'a group boundary moved by one component',
      (_d, p) => ((p[0].groups[0].end -= 1), (p[0].groups[1].start -= 1)),
      /^plans\[0\]\.bits_per_token is 132, was 134$/,
    ],
    [
      'one figure beyond tolerance',
      (d) => (d.measured.ratio_compressed *= 1.01),
      /^measured\.ratio_compressed is .* \(relative difference 9\.90e-3 > 0\.001\)$/,
    ],
    [
      'a measured count (exact even among the figures)',
      (d) => (d.measured.context_tokens += 1),
      /^measured\.context_tokens is 513, was 512$/,
    ],
    ['the producer version', (d) => (d.producer.version = '0.1.1'), /^producer\.version is "0\.1\.1", was "0\.1\.0"$/],
  ];
  it.each(changes)('%s: replaced, with the difference', async (_name, change, reason) => {
    const s = await setup();
    change(s.draft, s.plans);
    const w = await writeProfile(s.dir, s.draft, s.plans);
    expect(w.replaced).toBe(true);
    expect(w.unchanged).toBeUndefined();
    expect(w.difference).toMatch(reason);
    expect(s.untouched()).toBe(false);
    // What is on disk now is the new profile (its id changes only where a field decoding uses did).
    expect((await readProfile(s.dir)).manifest).toEqual(
      Object.fromEntries(Object.entries(w).filter(([k]) => k !== 'replaced' && k !== 'difference')),
    );
  });

  it('an existing profile that fails its checks is replaced, saying so', async () => {
    const s = await setup();
    const t = readFileSync(join(s.dir, TENSORS));
    t[t.length - 1] ^= 0xff; // the tensor file no longer matches tensors.sha256
    writeFileSync(join(s.dir, TENSORS), t);
    const w = await writeProfile(s.dir, s.draft, s.plans);
    expect(w.replaced).toBe(true);
    expect(w.difference).toMatch(/^the existing profile fails its checks \(.*sha256/);
    expect(readFileSync(join(s.dir, TENSORS)).equals(readFileSync(join(COMMITTED, TENSORS)))).toBe(true);
  });
});

describe('compareProfiles', () => {
  it('a NaN in a tensor is never equivalent; a missing figure is a difference', async () => {
    const p = await readProfile(COMMITTED);
    const nan = p.plans.map(clonePlan);
    nan[1].variances[5] = Number.NaN;
    expect(compareProfiles(p, { manifest: p.manifest, plans: nan })).toEqual({
      equivalent: false,
      difference: 'plan 1 variances differs by NaN (tolerance 0.001)',
    });
    const m = structuredClone(p.manifest) as Manifest;
    delete m.measured.tuning_rel_error;
    expect(compareProfiles(p, { manifest: m, plans: p.plans })).toMatchObject({
      equivalent: false,
      difference: expect.stringMatching(/^measured has fields/),
    });
  });
});

// readProfile checks orthonormality cheaply for large bases (exact column norms, sampled Gram
// entries and random probes, O(p·r)); validate computes the whole Gram matrix. The cheap check
// must never refuse what the full one accepts, and must catch scaled, duplicated or skewed bases.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { BasisPlan } from '../../src/codec/types.js';
import { checkProfile, readProfile } from '../../src/profile/read.js';
import { checkOrthonormal, orthonormalityError, sampledOrthonormalityError } from '../../src/profile/orthonormality.js';
import { mulberry32 } from '../../src/random.js';
import { checkProjection, DYNAMO_ORTHO_TOLERANCE } from '../../src/dynamo/profile.js';
import { PROFILE_LIMITS } from '../../src/profile/limits.js';
import { writeProfile, type ManifestDraft } from '../../src/profile/write.js';
import { validateProfile } from '../../src/profile/validate.js';
import { randomOrthogonal } from '../codec/rng.js';
import { committed, tempDir } from './helpers.js';

const TOL = PROFILE_LIMITS.orthoTolerance;
/** The first three draws (×2³²) of the generator src/profile/io.ts kept privately before it was split, seeded 0x9e3779b9: integer arithmetic, the same on every CPU. */
const PINNED_DRAWS = [1541420728, 454851044, 2900350524];

function orthogonal(n: number, seed: number): Float32Array {
  return Float32Array.from(randomOrthogonal(n, seed));
}

describe("checkOrthonormal: one check, each target's tolerance", () => {
  const n = 32;
  const V = orthogonal(n, 3);
  // Column norms off by 5e-4: inside Dynamo's 1e-3, outside a profile's 1e-4.
  const W = Float32Array.from(V);
  for (let i = 0; i < n; i++) W[i * n + 5] *= Math.sqrt(1 + 5e-4);

  it('takes the full Gram matrix up to fullWork and the sampled check above it, at the tolerance it is given', () => {
    expect(checkOrthonormal(V, n, n, { tolerance: TOL, fullWork: n ** 3 })).toMatchObject({ ok: true, sampled: false });
    const full = checkOrthonormal(W, n, n, { tolerance: TOL, fullWork: n ** 3 });
    expect(full).toMatchObject({ ok: false, sampled: false });
    expect(full.error).toBeCloseTo(orthonormalityError(W, n, n), 12);
    const sampled = checkOrthonormal(W, n, n, { tolerance: TOL, fullWork: n ** 3 - 1, seed: 2 });
    expect(sampled).toMatchObject({ ok: false, sampled: true, error: sampledOrthonormalityError(W, n, n, 2) });
    expect(checkOrthonormal(W, n, n, { tolerance: DYNAMO_ORTHO_TOLERANCE, fullWork: n ** 3 }).ok).toBe(true);
  });

  it('the Dynamo projection check accepts within 1e-3 and refuses a column scaled by 1.01', () => {
    const fail = (m: string) => new Error(m);
    expect(() => checkProjection(W, n, n, fail)).not.toThrow();
    const X = Float32Array.from(V);
    for (let i = 0; i < n; i++) X[i * n + 7] *= 1.01;
    expect(() => checkProjection(X, n, n, fail)).toThrow(
      /projection columns are not orthonormal: \|VᵀV − I\| reaches 2\.01e-2, tolerance 0\.001/,
    );
  });

  it('the sampled check draws from src/random.ts mulberry32 (the sequence its private copy gave: pinned first draws)', () => {
    const rand = mulberry32(0x9e3779b9);
    expect([rand(), rand(), rand()].map((x) => Math.floor(x * 2 ** 32))).toEqual(PINNED_DRAWS);
  });
});

describe('sampledOrthonormalityError', () => {
  const n = 96;
  const V = orthogonal(n, 3);

  it('passes what the full check passes (a float32 random orthogonal matrix)', () => {
    expect(orthonormalityError(V, n, n)).toBeLessThan(TOL);
    expect(sampledOrthonormalityError(V, n, n)).toBeLessThan(TOL);
  });

  it.each([
    ['scaled by 1.001', (v: Float32Array) => v.forEach((x, i) => (v[i] = x * 1.001))],
    [
      'one column scaled by 1.01',
      (v: Float32Array) => {
        for (let i = 0; i < n; i++) v[i * n + 5] *= 1.01;
      },
    ],
    [
      'a column duplicated',
      (v: Float32Array) => {
        for (let i = 0; i < n; i++) v[i * n + 7] = v[i * n + 8];
      },
    ],
    [
      'column 1 sheared towards column 0, renormalized',
      (v: Float32Array) => {
        let s = 0;
        for (let i = 0; i < n; i++) s += (v[i * n + 1] += 0.05 * v[i * n]) ** 2;
        for (let i = 0; i < n; i++) v[i * n + 1] /= Math.sqrt(s);
      },
    ],
    [
      'every column nudged into its neighbour, renormalized',
      (v: Float32Array) => {
        const w = Float32Array.from(v);
        for (let j = 0; j < n; j++) {
          let s = 0;
          for (let i = 0; i < n; i++) s += (v[i * n + j] = w[i * n + j] + 0.01 * w[i * n + ((j + 1) % n)]) ** 2;
          for (let i = 0; i < n; i++) v[i * n + j] /= Math.sqrt(s);
        }
      },
    ],
  ])('catches a basis %s (as does the full check)', (_name, edit) => {
    const W = Float32Array.from(V);
    edit(W);
    expect(orthonormalityError(W, n, n)).toBeGreaterThan(TOL);
    expect(sampledOrthonormalityError(W, n, n)).toBeGreaterThan(TOL);
  });

  it('is never stricter than the full check: entries just inside the tolerance pass', () => {
    // VᵀV = I + E with every |E_jk| ≤ 0.9·tol: scale column norms within tolerance.
    const W = Float32Array.from(V);
    for (let j = 0; j < n; j++) for (let i = 0; i < n; i++) W[i * n + j] *= Math.sqrt(1 + 0.9 * TOL * (j % 2 ? 1 : -1));
    expect(orthonormalityError(W, n, n)).toBeLessThan(TOL);
    expect(sampledOrthonormalityError(W, n, n)).toBeLessThan(TOL);
  });

  it('handles rank 0 and rank 1', () => {
    expect(sampledOrthonormalityError(new Float32Array(0), 8, 0)).toBe(0);
    const e1 = new Float32Array(8);
    e1[3] = 1;
    expect(sampledOrthonormalityError(e1, 8, 1)).toBe(0);
    expect(orthonormalityError(e1, 8, 1)).toBe(0);
  });
});

describe("a profile with bases too large for readProfile's full check (p = r = 256)", () => {
  async function write(edit?: (basis: Float32Array) => void): Promise<string> {
    const m = committed().manifest;
    const p = 256;
    const plans: BasisPlan[] = (['key', 'value'] as const).map((kind, k) => {
      const basis = orthogonal(p, 10 + k);
      if (k === 0 && edit) edit(basis);
      return {
        kind,
        layers: [0],
        dim: p,
        rank: p,
        mean: new Float32Array(p),
        basis,
        variances: new Float32Array(p).fill(1),
        lo: new Float32Array(p).fill(-1),
        hi: new Float32Array(p).fill(1),
        groups: [{ start: 0, end: p, type: 'int2', mode: 'static' }],
      };
    });
    const { profile_id: _i, tensors: _t, plans: _p, ...draft } = m;
    // One layer: its per-layer figures are one each (the reader checks them against model.layers).
    const rel = draft.measured.rel_error;
    const measured = { ...draft.measured, rel_error: { ...rel, key: [rel.key_mean], value: [rel.value_mean] } };
    const d: ManifestDraft = {
      ...draft,
      measured,
      model: { ...draft.model, layers: 1, kv_heads: 4, head_dim: 64, rope: { theta: 10000, rotary_dim: 64, layout: 'half' } },
    };
    const dir = join(tempDir(), 'big');
    await writeProfile(dir, d, plans);
    return dir;
  }

  it('is read (the sampled check, O(p·r)) and validated (the full check) when orthonormal', async () => {
    expect(256 ** 3).toBeGreaterThan(PROFILE_LIMITS.fullOrthoWork);
    const dir = await write();
    const p = await readProfile(dir);
    expect(p.plans[0].rank).toBe(256);
    // readProfile's bound takes the cheap path for this basis (what keeps reading fast; timed in scripts/test-timings-bench.ts).
    const bases = (await checkProfile(dir, { collect: true })).checks.find((c) => c.name === 'orthonormal bases')!;
    expect(bases.ok).toBe(true);
    expect(bases.detail).toMatch(/\((\d+) of \1 plans checked by exact column norms, sampled pairs and random probes\)/);
    const v = await validateProfile(dir);
    expect(v.ok, JSON.stringify(v.checks)).toBe(true);
  });

  it('is refused by both when one basis column is scaled', async () => {
    const dir = await write((b) => {
      for (let i = 0; i < 256; i++) b[i * 256 + 17] *= 1.002;
    });
    await expect(readProfile(dir)).rejects.toMatchObject({
      code: 'PROFILE_INVALID',
      message: expect.stringMatching(/plan 0 basis .* not orthonormal: .* \(sampled\)/),
    });
    const v = await validateProfile(dir);
    expect(v.checks.find((c) => c.name === 'orthonormal bases')).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/plan 0 basis/),
    });
  });
});

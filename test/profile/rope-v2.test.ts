// Profile format 2: per-layer RoPE in the manifest (model.rope as groups), covered by the profile
// id, read back into each layer's RoPE for the codec; format 1 profiles (one RoPE object) still read.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { computeProfileId, profileIdText } from '../../src/profile/id.js';
import { readProfile } from '../../src/profile/read.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { manifestRope, ropeFromManifest } from '../../src/profile/rope.js';
import type { LayerRope, RopeSpec } from '../../src/rope/types.js';
import { resign, syntheticCache, tempDir, writeFiles, type Json } from './helpers.js';

const V1 = join(import.meta.dirname, '..', 'fixtures', 'profile-v1');
const v1 = () => ({
  manifest: JSON.parse(readFileSync(join(V1, 'kvtc-profile.json'), 'utf8')) as Json,
  tensors: readFileSync(join(V1, 'kvtc-profile.safetensors')),
});

const A: RopeSpec = { theta: 10000, rotaryDim: 8, layout: 'half' };
const Y: RopeSpec = {
  theta: 500000,
  rotaryDim: 4,
  layout: 'interleaved',
  attentionFactor: 1.2,
  scaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 64, betaFast: 32, betaSlow: 1, truncate: true },
};
const LR: RopeSpec = {
  theta: 10000,
  rotaryDim: 6,
  layout: 'half',
  attentionFactor: 1.1,
  scaling: { type: 'longrope', shortFactor: [1, 1.5, 2], longFactor: [1, 4, 16], originalMaxPositionEmbeddings: 100 },
};
const PER_LAYER: LayerRope[] = [A, null, Y, A, LR];

/** The v1 fixture rewritten as format 2 with `rope` per layer, re-signed. */
function v2Dir(rope: LayerRope[] | Json[], edit?: (m: Json) => void): string {
  const { manifest, tensors } = v1();
  manifest.format_version = 2;
  manifest.model.rope = (rope as unknown[]).every((r) => r === null || 'rotaryDim' in (r as object))
    ? manifestRope(rope as LayerRope[])
    : rope;
  edit?.(manifest);
  return writeFiles(join(tempDir(), 'p'), resign(manifest, tensors), tensors);
}

describe('profile format 2: RoPE per layer', () => {
  it('a format 1 profile still reads: one RoPE for every layer', async () => {
    const p = await readProfile(V1);
    expect(p.manifest.format_version).toBe(1);
    expect(p.manifest.profile_id).toBe('b61faa184a576db6');
    expect(ropeFromManifest(p.manifest)).toEqual(Array(5).fill(A));
  });

  it('one RoPE on every layer keeps its profile id in format 2 (and so the bytes of its blobs)', async () => {
    const d = v2Dir(Array(5).fill(A));
    const p = await readProfile(d);
    expect(p.manifest.model.rope).toEqual([{ layers: [0, 1, 2, 3, 4], theta: 10000, rotary_dim: 8, layout: 'half' }]);
    expect(p.manifest.profile_id).toBe('b61faa184a576db6');
  });

  it("groups round-trip each layer's RoPE (NoPE, yarn with attention factor, longrope) and the id covers every field", async () => {
    const d = v2Dir(PER_LAYER);
    const p = await readProfile(d);
    expect(p.manifest.model.rope).toEqual([
      { layers: [0, 3], theta: 10000, rotary_dim: 8, layout: 'half' },
      { layers: [1], none: true },
      {
        layers: [2],
        theta: 500000,
        rotary_dim: 4,
        layout: 'interleaved',
        scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 64, beta_fast: 32, beta_slow: 1, truncate: true },
        attention_factor: 1.2,
      },
      {
        layers: [4],
        theta: 10000,
        rotary_dim: 6,
        layout: 'half',
        scaling: { type: 'longrope', short_factor: [1, 1.5, 2], long_factor: [1, 4, 16], original_max_position_embeddings: 100 },
        attention_factor: 1.1,
      },
    ]);
    expect(ropeFromManifest(p.manifest)).toEqual(PER_LAYER);
    const text = profileIdText(p.manifest);
    expect(text).toContain('model.rope.groups 4\nmodel.rope.0.layers 0,3\n');
    expect(text).toContain('model.rope.1.none\n');
    expect(text).toContain('model.rope.2.scaling.truncate 1\n');
    expect(text).toMatch(/model\.rope\.3\.scaling\.long_factor [0-9a-f]{16},[0-9a-f]{16},[0-9a-f]{16}\n/);
    const id = p.manifest.profile_id;
    expect(id).not.toBe('b61faa184a576db6');
    // every field moves the id
    const edits: ((m: Json) => void)[] = [
      (m) => (m.model.rope[0].layers = [0]),
      (m) => (m.model.rope[2].attention_factor = 1.25),
      (m) => (m.model.rope[2].scaling.truncate = false),
      (m) => (m.model.rope[2].scaling.beta_slow = 2),
      (m) => (m.model.rope[3].scaling.long_factor[2] = 17),
      (m) => (m.model.rope[3].scaling.original_max_position_embeddings = 101),
      (m) => (m.model.rope[1] = { layers: [1], theta: 10000, rotary_dim: 8, layout: 'half' }),
    ];
    for (const e of edits) {
      const m = structuredClone(p.manifest) as Json;
      e(m);
      expect(computeProfileId(m)).not.toBe(id);
    }
  });

  it('the codec of a format 2 profile un-rotates each layer with its own RoPE and round-trips a cache', async () => {
    const p = await readProfile(v2Dir(PER_LAYER));
    const codec = await codecFromProfile(p);
    try {
      expect(codec.spec.rope).toEqual(PER_LAYER);
      for (const tokens of [60, 156]) {
        // longrope layer: short factors up to 100 positions, long beyond
        const cache = syntheticCache(tokens, 7);
        const { blob } = await codec.encode(cache);
        const { cache: out } = await codec.decode(blob);
        expect(out.tokens).toBe(tokens);
        let worst = 0;
        for (let l = 0; l < 5; l++) for (let i = 0; i < 4 * tokens * 8; i += 97) worst = Math.max(worst, Math.abs(out.values[l][i]));
        expect(Number.isFinite(worst)).toBe(true);
      }
    } finally {
      await codec.release();
    }
  });

  it.each([
    [
      'a layer in two groups',
      (m: Json) => (m.model.rope[1].layers = [1, 3]),
      /model\.rope\[1\]\.layers names layer 3, which model\.rope\[0\] names too/,
    ],
    ['a layer in no group', (m: Json) => (m.model.rope[0].layers = [0]), /model\.rope names no RoPE \(or none\) for layer 3/],
    ['a layer the model does not have', (m: Json) => (m.model.rope[1].layers = [1, 9]), /names layer 9; the model has 5/],
    [
      'longrope factors of the wrong count',
      (m: Json) => (m.model.rope[3].scaling.short_factor = [1, 2]),
      /scaling\.short_factor has 2 factors; rotary_dim 6 needs 3/,
    ],
    ['a non-positive attention factor', (m: Json) => (m.model.rope[2].attention_factor = 0), /attention_factor/],
    ['format 1 with groups', (m: Json) => (m.format_version = 1), /model\.rope is a list of groups, which is format 2/],
  ])('refused: %s', async (_name, edit, message) => {
    await expect(readProfile(v2Dir(PER_LAYER, edit))).rejects.toMatchObject({
      code: 'PROFILE_INVALID',
      message: expect.stringMatching(message),
    });
  });
});

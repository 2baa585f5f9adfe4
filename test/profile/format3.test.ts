// Profile format 3 (docs/profile-format.md §2.4): written exactly when a format-3 field is present,
// with its id lines right after model.kv_dtype; every format-2 profile (the committed ones, the
// v1 fixture) still serializes to its exact bytes and id; the reader refuses inconsistent format-3
// fields with PROFILE_INVALID naming the field, in readProfile and validate alike.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { KvtcError } from '../../src/errors.js';
import { DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { format3ModelFields, kvDumpFingerprintId, profileFormatVersion, specFormat3Fields } from '../../src/profile/format3.js';
import { computeProfileId, profileIdText } from '../../src/profile/id.js';
import { readProfile, type Profile } from '../../src/profile/read.js';
import { FORMAT3_FIELDS, format3FieldsOf, MANIFEST_FILE, TENSORS_FILE } from '../../src/profile/schema.js';
import { validateProfile } from '../../src/profile/validate.js';
import { manifestText, serializeProfile, writeProfile } from '../../src/profile/write.js';
import { MLA, SHARD, writeFormat3Profile } from '../codec/format3-fixture.js';
import { PROFILE as V1, resign, tempDir, writeFiles, type Json } from './helpers.js';

let mla: Profile;
let shard: Profile;
beforeAll(async () => {
  mla = await writeFormat3Profile(MLA, join(tempDir(), 'mla'));
  shard = await writeFormat3Profile(SHARD, join(tempDir(), 'shard'));
}, 60_000);

/** The manifest and plans of a profile as a writer's input. */
function draftOf(p: Profile) {
  const { profile_id: _i, tensors: _t, plans: _p, ...draft } = p.manifest;
  return draft;
}

/** The lines of the id text from model.kv_dtype up to the first RoPE line. */
function format3Lines(text: string): string[] {
  const lines = text.split('\n');
  const at = lines.findIndex((l) => l.startsWith('model.kv_dtype '));
  const end = lines.findIndex((l) => l.startsWith('model.rope'));
  return lines.slice(at, end);
}

describe('profile format 3: writing, reading, id', () => {
  it('a profile with format-3 fields is written as format 3 and reads back field for field', async () => {
    expect(mla.manifest.format_version).toBe(3);
    expect(mla.manifest.model).toMatchObject({
      family: 'deepseek_v3',
      kv_heads: 1,
      head_dim: 8,
      value_head_dim: 24,
      cache: 'mla-latent',
      model_layers: 6,
      cache_layers: [1, 3, 4],
      fingerprint: { source: 'kv-dump', id: kvDumpFingerprintId('ab'.repeat(32)) },
    });
    expect(mla.manifest.model.fingerprint.onnx_sha256).toBeUndefined();
    expect(shard.manifest.shard).toEqual({ tp_rank: 1, tp_size: 2, pp_rank: 0, pp_size: 1, kv_heads: [2, 3] });
    expect(format3FieldsOf(mla.manifest)).toEqual([
      'model.value_head_dim',
      'model.cache',
      'model.model_layers',
      'model.cache_layers',
      'model.fingerprint.source',
    ]);
    // Written again from what was read: the same manifest, tensor bytes and id.
    const out = join(tempDir(), 'copy');
    const w = await writeProfile(out, draftOf(mla), mla.plans);
    expect(w.profile_id).toBe(mla.manifest.profile_id);
    expect(readFileSync(join(out, TENSORS_FILE)).equals(readFileSync(join(mla.dir, TENSORS_FILE)))).toBe(true);
    const back = await readProfile(out);
    expect(back.manifest).toEqual(mla.manifest);
    expect(back.plans).toEqual(mla.plans);
  });

  it("the writer puts format 3's fields where the schema has them, whatever order the draft used", () => {
    for (const p of [mla, shard]) {
      const d = draftOf(p);
      const text = manifestText(serializeProfile(d, p.plans).manifest);
      const inner = { ...d, model: { ...Object.fromEntries(Object.entries(d.model).reverse()) } as typeof d.model };
      expect(manifestText(serializeProfile(inner, p.plans).manifest)).toBe(text);
      const keys = Object.keys(JSON.parse(text).model);
      expect(keys.slice(keys.indexOf('kv_dtype'), keys.indexOf('rope') + 1)).toEqual(
        ['kv_dtype', 'value_head_dim', 'cache', 'model_layers', 'cache_layers', 'rope'].filter((k) => k in d.model),
      );
      const top = Object.keys(JSON.parse(text));
      if (p.manifest.shard) expect(top[top.indexOf('model') + 1]).toBe('shard');
      expect(Object.keys(JSON.parse(text).model.fingerprint)).toEqual(['id', 'spec_sha256', 'source']);
    }
  });

  it('the id text has the format-3 lines right after model.kv_dtype, in the documented order, only when present', () => {
    expect(format3Lines(profileIdText(mla.manifest))).toEqual([
      'model.kv_dtype float32',
      'model.value_head_dim 24',
      'model.cache mla-latent',
      'model.model_layers 6',
      'model.cache_layers 1,3,4',
    ]);
    expect(format3Lines(profileIdText(shard.manifest))).toEqual([
      'model.kv_dtype float32',
      'model.model_layers 6',
      'model.cache_layers 1,3,4',
      'shard 1 2 0 1',
      'shard.kv_heads 2,3',
    ]);
    expect(computeProfileId(mla.manifest)).toBe(mla.manifest.profile_id);
  });

  it('every format-3 field that decoding uses moves the id; the fingerprint source does not (like the rest of the fingerprint)', () => {
    const edits: [Profile, (m: Json) => void][] = [
      [mla, (m) => (m.model.value_head_dim = 25)],
      [mla, (m) => delete m.model.value_head_dim],
      [mla, (m) => (m.model.cache = 'gqa')],
      [mla, (m) => delete m.model.cache],
      [mla, (m) => (m.model.model_layers = 7)],
      [mla, (m) => (m.model.cache_layers = [0, 3, 4])],
      [shard, (m) => (m.shard.tp_rank = 0)],
      [shard, (m) => (m.shard.tp_size = 4)],
      [shard, (m) => (m.shard.pp_rank = 1)],
      [shard, (m) => (m.shard.pp_size = 2)],
      [shard, (m) => (m.shard.kv_heads = [3, 2])],
      [shard, (m) => delete m.shard],
    ];
    const ids = new Set<string>([mla.manifest.profile_id, shard.manifest.profile_id]);
    for (const [p, e] of edits) {
      const m = structuredClone(p.manifest) as Json;
      e(m);
      const id = computeProfileId(m);
      expect(ids.has(id), JSON.stringify(format3Lines(profileIdText(m)))).toBe(false);
      ids.add(id);
    }
    const m = structuredClone(mla.manifest) as Json;
    delete m.model.fingerprint.source;
    expect(computeProfileId(m)).toBe(mla.manifest.profile_id);
  });

  it('format-2 profiles are written exactly as before: the committed profiles and the v1 fixture keep their bytes and ids', async () => {
    const root = DEFAULT_PROFILES_DIR;
    const dirs = [...readdirSync(root).map((d) => join(root, d)), V1];
    expect(dirs.length).toBeGreaterThanOrEqual(4);
    for (const dir of dirs) {
      const p = await readProfile(dir);
      expect(p.manifest.format_version).toBeLessThan(3);
      expect(format3FieldsOf(p.manifest)).toEqual([]);
      const { manifest, tensors } = serializeProfile(draftOf(p), p.plans);
      expect(manifestText(manifest), dir).toBe(readFileSync(join(dir, MANIFEST_FILE), 'utf8'));
      expect(Buffer.from(tensors).equals(readFileSync(join(dir, TENSORS_FILE))), dir).toBe(true);
      expect(profileIdText(manifest)).not.toMatch(/^(model\.(value_head_dim|cache|model_layers|cache_layers)|shard)/m);
    }
  });

  it('the writer picks the version: 3 with any format-3 field, 2 without (also for a draft that says 3)', () => {
    const d = draftOf(mla);
    expect(profileFormatVersion(d)).toBe(3);
    const plain = {
      ...d,
      format_version: 3 as const,
      model: { ...d.model, family: 'llama', fingerprint: { id: 'a'.repeat(16), spec_sha256: 'b'.repeat(64), onnx_sha256: 'c'.repeat(64) } },
    } as Json;
    for (const k of ['value_head_dim', 'cache', 'model_layers', 'cache_layers']) delete plain.model[k];
    expect(profileFormatVersion(plain)).toBe(2);
    // the value plans are 24 wide: give them the key width to make a valid format-2 profile
    const plans = mla.plans
      .map((p) => (p.kind === 'value' ? mla.plans.find((q) => q.kind === 'key' && q.layers[0] === p.layers[0])! : p))
      .map((p, i) => ({ ...p, kind: i < 3 ? ('key' as const) : ('value' as const) }));
    const { manifest } = serializeProfile(plain, plans);
    expect(manifest.format_version).toBe(2);
    for (const f of FORMAT3_FIELDS) expect(format3FieldsOf(manifest)).not.toContain(f);
  });

  it('ModelSpec ↔ manifest: defaults are left out (format 2 stays format 2), the rest round-trips', () => {
    const base = { layers: 3, headDim: 8 };
    expect(format3ModelFields({ ...base, valueDim: 8, cacheLayout: 'gqa', modelLayers: 3, cacheLayers: [0, 1, 2] })).toEqual({});
    expect(format3ModelFields({ ...base, modelLayers: 5 })).toEqual({ model_layers: 5, cache_layers: [0, 1, 2] });
    const f = format3ModelFields(MLA);
    expect(f).toEqual({ value_head_dim: 24, cache: 'mla-latent', model_layers: 6, cache_layers: [1, 3, 4] });
    expect(specFormat3Fields(shard.manifest)).toEqual({ modelLayers: 6, cacheLayers: [1, 3, 4], shard: SHARD.shard });
    expect(specFormat3Fields(mla.manifest)).toEqual({ valueDim: 24, cacheLayout: 'mla-latent', modelLayers: 6, cacheLayers: [1, 3, 4] });
  });
});

/** A copy of `p` with `edit` applied to its manifest, re-signed (so the specific check must catch it). */
function variant(p: Profile | string, edit: (m: Json) => void): string {
  const dir = typeof p === 'string' ? p : p.dir;
  const manifest = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), 'utf8'));
  const tensors = readFileSync(join(dir, TENSORS_FILE));
  edit(manifest);
  return writeFiles(join(tempDir(), 'p'), resign(manifest, tensors), tensors);
}

const CASES: [string, () => string, string, RegExp][] = [
  [
    'format 2 with a format-3 field',
    () => variant(mla, (m) => (m.format_version = 2)),
    'format',
    /format_version is 2, but model\.value_head_dim, model\.cache, model\.model_layers, model\.cache_layers and model\.fingerprint\.source are format 3/,
  ],
  [
    'format 3 without any format-3 field',
    () => variant(V1, (m) => ((m.format_version = 3), (m.model.rope = [{ layers: [0, 1, 2, 3, 4], ...m.model.rope }]))),
    'format',
    /format_version is 3, but the manifest has none of format 3's fields/,
  ],
  [
    'a format-1 profile with a transformers label family',
    () => variant(V1, (m) => (m.model.family = 'deepseek_v3')),
    'format',
    /model\.family "deepseek_v3" is not one of format 1's families/,
  ],
  ['a family that is no model_type label', () => variant(mla, (m) => (m.model.family = 'Deep-Seek')), 'schema', /model\.family/],
  [
    'cache_layers not increasing',
    () => variant(mla, (m) => (m.model.cache_layers = [1, 4, 3])),
    'format',
    /model\.cache_layers\[2\] = 3 is not above model\.cache_layers\[1\] = 4/,
  ],
  [
    'cache_layers of another length than layers',
    () => variant(mla, (m) => (m.model.cache_layers = [1, 3])),
    'format',
    /model\.cache_layers has 2 entries, but model\.layers is 3/,
  ],
  [
    'a cache layer the model does not have',
    () => variant(mla, (m) => (m.model.cache_layers = [1, 3, 6])),
    'format',
    /model\.cache_layers\[2\] = 6 is not a layer of the model \(model\.model_layers is 6/,
  ],
  [
    'model_layers without cache_layers',
    () => variant(mla, (m) => delete m.model.cache_layers),
    'format',
    /model\.model_layers is present without model\.cache_layers/,
  ],
  ['cache_layers with a negative entry', () => variant(mla, (m) => (m.model.cache_layers = [-1, 3, 4])), 'schema', /cache_layers/],
  [
    'shard tp_rank ≥ tp_size',
    () => variant(shard, (m) => (m.shard.tp_rank = 2)),
    'format',
    /shard\.tp_rank 2 is not below shard\.tp_size 2/,
  ],
  [
    'shard pp_rank ≥ pp_size',
    () => variant(shard, (m) => (m.shard.pp_rank = 1)),
    'format',
    /shard\.pp_rank 1 is not below shard\.pp_size 1/,
  ],
  [
    'shard kv_heads of another length than kv_heads',
    () => variant(shard, (m) => (m.shard.kv_heads = [2])),
    'format',
    /shard\.kv_heads has 1 entries, but model\.kv_heads is 2/,
  ],
  [
    'a shard head listed twice',
    () => variant(shard, (m) => (m.shard.kv_heads = [2, 2])),
    'format',
    /shard\.kv_heads\[1\] = 2 is listed twice/,
  ],
  ['a shard field unknown', () => variant(shard, (m) => (m.shard.layers = [1, 3, 4])), 'schema', /shard/],
  [
    'mla-latent with two KV heads',
    () => variant(shard, (m) => (m.model.cache = 'mla-latent')),
    'format',
    /model\.cache is mla-latent, but model\.kv_heads is 2/,
  ],
  ['an unknown cache layout', () => variant(mla, (m) => (m.model.cache = 'mla')), 'schema', /model\.cache/],
  ['value_head_dim 0', () => variant(mla, (m) => (m.model.value_head_dim = 0)), 'schema', /value_head_dim/],
  [
    'value_head_dim beyond a head dim',
    () => variant(mla, (m) => (m.model.value_head_dim = 70000)),
    'format',
    /model\.value_head_dim = 70000 exceeds 65535/,
  ],
  [
    'value plans of another width than value_head_dim',
    () => variant(mla, (m) => (m.model.value_head_dim = 16)),
    'plans',
    /plans\[3\]\.dim is 24, but 1 layers × 1 KV heads × 16 value head dim = 16/,
  ],
  [
    'a kv-dump fingerprint with an ONNX hash',
    () => variant(mla, (m) => (m.model.fingerprint.onnx_sha256 = 'e'.repeat(64))),
    'format',
    /model\.fingerprint\.onnx_sha256 is present, but fingerprint\.source is kv-dump/,
  ],
  [
    'a kv-dump fingerprint id that is not derived from spec_sha256',
    () => variant(mla, (m) => (m.model.fingerprint.id = '0123456789abcdef')),
    'format',
    /model\.fingerprint\.id 0123456789abcdef is not the id of a kv-dump fingerprint/,
  ],
  [
    'no ONNX hash without a kv-dump source',
    () => variant(V1, (m) => delete m.model.fingerprint.onnx_sha256),
    'format',
    /model\.fingerprint\.onnx_sha256 is missing/,
  ],
];

describe('format 3: the reader refuses inconsistent fields, naming them (readProfile and validate)', () => {
  it.each(CASES)('%s', async (_name, make, check, message) => {
    const dir = make();
    const err = await readProfile(dir).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, 'readProfile accepted it').toBeInstanceOf(KvtcError);
    expect((err as KvtcError).code).toBe('PROFILE_INVALID');
    expect((err as KvtcError).message).toMatch(message);
    const v = await validateProfile(dir);
    const c = v.checks.find((x) => x.name === check);
    expect(c, JSON.stringify(v.checks)).toBeDefined();
    expect(c!.ok).toBe(false);
    if (check !== 'schema') expect(c!.detail).toMatch(message);
  });

  it("a shard's KV heads need not divide the query heads (a rank's share); a whole model's must", async () => {
    // SHARD's rank holds 2 KV heads; 5 query heads is no multiple of 2, which only a whole-model profile must be.
    const odd = variant(shard, (m) => (m.model.heads = 5));
    await expect(readProfile(odd)).resolves.toBeDefined();
    const whole = variant(shard, (m) => {
      delete m.shard;
      m.model.heads = 5;
    });
    await expect(readProfile(whole)).rejects.toThrow(/model\.heads 5 is not a multiple of model\.kv_heads 2/);
  });

  it('validate passes a format-3 profile, the format check naming its fields', async () => {
    const v = await validateProfile(mla.dir);
    expect(v.checks.filter((c) => !c.ok)).toEqual([]);
    expect(v.checks.find((c) => c.name === 'format')!.detail).toMatch(
      /format 3: family deepseek_v3, fingerprint kv-dump; format 3 fields: model\.value_head_dim, model\.cache, model\.model_layers, model\.cache_layers and model\.fingerprint\.source/,
    );
  });
});

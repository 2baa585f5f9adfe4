// Profile fuzzing of format 3's fields (issue 20; the suite for format 2 is fuzz.test.ts): seeded
// mutations of the format-3 fields (model.value_head_dim, cache, model_layers, cache_layers,
// family, fingerprint, shard), the version and the geometry they constrain, of an MLA-like and a
// sharded profile (test/codec/format3-fixture.ts), with the profile id re-derived or not. Each
// mutated profile is refused with PROFILE_INVALID / PROFILE_VERSION (and fails validate), or reads
// and then — same id — decodes a fixed blob to the very same values, or — a new, re-signed id —
// encodes and decodes a fixed cache to finite values.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { KvtcError } from '../../src/errors.js';
import type { KvCache } from '../../src/model/types.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { profileIdText } from '../../src/profile/id.js';
import { readProfile, type Profile } from '../../src/profile/read.js';
import { MANIFEST_FILE, TENSORS_FILE } from '../../src/profile/schema.js';
import { validateProfile } from '../../src/profile/validate.js';
import { MLA, SHARD, syntheticCache, writeFormat3Profile, type Geometry } from '../codec/format3-fixture.js';
import { rng } from '../codec/rng.js';
import { resign, tempDir, writeFiles, type Json } from './helpers.js';

type Outcome = 'refused' | 'same' | 'finite';

interface Base {
  g: Geometry;
  profile: Profile;
  manifest: Json;
  tensors: Buffer;
  cache: KvCache;
  blob: Uint8Array;
  reference: KvCache;
}

const bases: Base[] = [];
const root = tempDir('kvtc-fuzz3-');
let counter = 0;

beforeAll(async () => {
  for (const g of [MLA, SHARD]) {
    const profile = await writeFormat3Profile(g, join(root, `base-${g.family}`));
    const cache = syntheticCache(g, 60, 77);
    const codec = await codecFromProfile(profile);
    try {
      const blob = (await codec.encode(cache)).blob;
      const reference = (await codec.decode(blob)).cache;
      bases.push({
        g,
        profile,
        manifest: JSON.parse(readFileSync(join(profile.dir, MANIFEST_FILE), 'utf8')),
        tensors: readFileSync(join(profile.dir, TENSORS_FILE)),
        cache,
        blob,
        reference,
      });
    } finally {
      await codec.release();
    }
  }
}, 60_000);

type Path = (string | number)[];

function paths(v: Json, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v && typeof v === 'object') for (const k of Object.keys(v)) paths(v[k], [...at, k], out);
  return out;
}
const getAt = (v: Json, p: Path): Json => p.reduce((o, k) => o[k], v);
function setAt(v: Json, p: Path, x: Json): void {
  getAt(v, p.slice(0, -1))[p[p.length - 1]] = x;
}

/** The fields format 3 adds or constrains. */
const FIELDS = (p: Path) =>
  p.length > 0 &&
  (p[0] === 'shard' ||
    p[0] === 'format_version' ||
    (p[0] === 'model' &&
      ['value_head_dim', 'cache', 'model_layers', 'cache_layers', 'family', 'fingerprint', 'layers', 'kv_heads', 'head_dim'].includes(
        String(p[1]),
      )) ||
    (p[0] === 'plans' && p[2] === 'dim'));

const STRINGS: Record<string, string[]> = {
  cache: ['gqa', 'mla-latent', 'mla', ''],
  family: ['llama', 'deepseek_v3', 'Qwen3', 'x'.repeat(65), 'kimi_k2'],
  source: ['kv-dump', 'onnx', ''],
};

/** One random edit at `p`: numbers moved, arrays reshaped, strings swapped, keys deleted or added. */
function mutate(m: Json, p: Path, uniform: () => number): string {
  const v = getAt(m, p);
  const name = p.join('.');
  const pick = <T>(xs: T[]): T => xs[Math.floor(uniform() * xs.length)];
  if (uniform() < 0.12) {
    const parent = getAt(m, p.slice(0, -1));
    if (Array.isArray(parent)) parent.splice(p[p.length - 1] as number, 1);
    else delete parent[p[p.length - 1]];
    return `delete ${name}`;
  }
  if (typeof v === 'number') {
    const [d, x] = pick<[string, Json]>([
      ['+1', v + 1],
      ['-1', v - 1],
      ['×2', v * 2],
      ['0', 0],
      ['-1 (value)', -1],
      ['+0.5', v + 0.5],
      ['70000', 70000],
      ['"as string"', String(v)],
    ]);
    setAt(m, p, x);
    return `${name} ${d}`;
  }
  if (typeof v === 'string') {
    const x = pick([...(STRINGS[String(p[p.length - 1])] ?? []), `${v}x`, '', 5 as unknown as string]);
    setAt(m, p, x);
    return `${name} = ${JSON.stringify(x)}`;
  }
  if (Array.isArray(v)) {
    const [d, x] = pick<[string, Json]>([
      ['drop last', v.slice(0, -1)],
      ['duplicate first', [v[0], ...v]],
      ['reversed', [...v].reverse()],
      ['emptied', []],
      ['append 9', [...v, 9]],
      ['last +1', [...v.slice(0, -1), v[v.length - 1] + 1]],
    ]);
    setAt(m, p, x);
    return `${name} ${d}`;
  }
  if (v && typeof v === 'object') {
    const keys = Object.keys(v);
    if (uniform() < 0.5) {
      v.extra_key = 1;
      return `${name} extra key`;
    }
    const k = pick(keys);
    delete v[k];
    return `${name} remove ${k}`;
  }
  setAt(m, p, 0);
  return `${name} = 0`;
}

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

async function run(b: Base, manifest: Json, desc: string): Promise<Outcome> {
  const dir = writeFiles(join(root, `m${counter++}`), manifest, b.tensors);
  let profile: Profile | undefined;
  let error: unknown;
  try {
    profile = await readProfile(dir);
  } catch (e) {
    error = e;
  }
  const v = await validateProfile(dir);
  if (!profile) {
    expect(error, `${desc}: ${String(error)}`).toBeInstanceOf(KvtcError);
    expect(['PROFILE_INVALID', 'PROFILE_VERSION'], desc).toContain((error as KvtcError).code);
    expect(v.ok, `${desc}: readProfile refused it but validate passed it`).toBe(false);
    return 'refused';
  }
  expect(v.ok, `${desc}: validate failed ${JSON.stringify(v.checks.filter((c) => !c.ok))}`).toBe(true);
  const codec = await codecFromProfile(profile);
  try {
    if (profile.manifest.profile_id === b.profile.manifest.profile_id) {
      expect(profileIdText(profile.manifest), desc).toBe(profileIdText(b.profile.manifest));
      const { cache: out } = await codec.decode(b.blob);
      for (let l = 0; l < b.reference.layers; l++) {
        expect(bits(out.keys[l]).equals(bits(b.reference.keys[l])), desc).toBe(true);
        expect(bits(out.values[l]).equals(bits(b.reference.values[l])), desc).toBe(true);
      }
      return 'same';
    }
    const { cache: out } = await codec.decode((await codec.encode(b.cache)).blob);
    for (const a of [...out.keys, ...out.values]) expect(a.every(Number.isFinite), desc).toBe(true);
    return 'finite';
  } finally {
    await codec.release();
  }
}

describe('profile fuzzing: format 3 fields (seeded, in-process)', () => {
  it('mutations of format 3 fields: refused, identical decodes (same id) or finite round trips (re-signed)', async () => {
    const tally: Record<string, Record<Outcome, number>> = {
      plain: { refused: 0, same: 0, finite: 0 },
      resigned: { refused: 0, same: 0, finite: 0 },
    };
    for (let i = 0; i < 160; i++) {
      const b = bases[i % 2];
      const { uniform } = rng(9000 + i);
      const m = structuredClone(b.manifest);
      const all = paths(m).filter(FIELDS);
      const p = all[Math.floor(uniform() * all.length)];
      const desc = `${b.g.family} #${i}: ${mutate(m, p, uniform)}`;
      const signed = i % 4 >= 2;
      let manifest: Json = m;
      if (signed) {
        try {
          manifest = resign(m, b.tensors);
        } catch {
          // too broken for an id: keep the old one
        }
      }
      const outcome = await run(b, manifest, `${signed ? 'resigned ' : ''}${desc}`);
      if (!signed) expect(outcome, desc).not.toBe('finite');
      tally[signed ? 'resigned' : 'plain'][outcome]++;
    }
    console.log(`[profile-fuzz format 3] outcomes: ${JSON.stringify(tally)}`);
    expect(tally.plain.refused).toBeGreaterThan(30);
    expect(tally.resigned.refused).toBeGreaterThan(20);
    expect(tally.resigned.finite + tally.resigned.same).toBeGreaterThan(3);
  }, 120_000);
});

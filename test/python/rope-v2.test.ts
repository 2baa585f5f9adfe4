// The Python runtime (python/kvtc, NumPy) reads profile format 2 with per-layer RoPE — a NoPE
// layer, yarn with an attention factor, longrope on both sides of its switch — and agrees with the
// Node codec: same profile id, Node blobs decoded to the same cache, bit-exact encodes byte for byte.
// Format 1 (the fixture) still reads.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readKvCache, writeKvCache } from '../../src/model/kv-io.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile } from '../../src/profile/read.js';
import { manifestRope } from '../../src/profile/rope.js';
import type { LayerRope, RopeSpec } from '../../src/rope/types.js';
import { resign, syntheticCache, tempDir, writeFiles, type Json } from '../profile/helpers.js';

const PY = process.env.KVTC_TEST_PYTHON ?? 'python3';
const probe = spawnSync(PY, ['-c', 'import numpy'], { encoding: 'utf8' });
const HAVE_PYTHON = !probe.error && probe.status === 0;
// A missing python3 or NumPy is a set-up error: the suite fails saying what to install, never skips.
const MISSING_PYTHON = `the Python runtime tests need ${PY} with NumPy (${probe.error?.message ?? probe.stderr?.trim()}); install the test dependencies with \`${PY} -m pip install -r python/requirements-test.txt\` or set KVTC_TEST_PYTHON to a Python that has them`;
const PKG = join(import.meta.dirname, '..', '..', 'python');
const V1 = join(import.meta.dirname, '..', 'fixtures', 'profile-v1');

const A: RopeSpec = { theta: 10000, rotaryDim: 8, layout: 'half' };
const Y: RopeSpec = { theta: 500000, rotaryDim: 4, layout: 'interleaved', attentionFactor: 1.2, scaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 64, betaFast: 32, betaSlow: 1, truncate: true } };
const LR: RopeSpec = { theta: 10000, rotaryDim: 6, layout: 'half', attentionFactor: 1.1, scaling: { type: 'longrope', shortFactor: [1, 1.5, 2], longFactor: [1, 4, 16], originalMaxPositionEmbeddings: 100 } };
const PER_LAYER: LayerRope[] = [A, null, Y, A, LR];

function v2Dir(edit?: (m: Json) => void): string {
  const manifest = JSON.parse(readFileSync(join(V1, 'kvtc-profile.json'), 'utf8'));
  const tensors = readFileSync(join(V1, 'kvtc-profile.safetensors'));
  manifest.format_version = 2;
  manifest.model.rope = manifestRope(PER_LAYER);
  edit?.(manifest);
  return writeFiles(join(tempDir(), 'p'), resign(manifest, tensors), tensors);
}

const SCRIPT = `
import json, sys
import numpy as np
import kvtc
job = json.load(open(sys.argv[1]))
out = {}
try:
    p = kvtc.read_profile(job["profile"])
    out["id"] = p.profile_id
    out["ropes"] = [None if r is None else [r.theta, r.rotary_dim, r.layout, r.attention_factor, (r.scaling or {}).get("type")] for r in p.layer_ropes]
    for c in job.get("cases", []):
        blob = open(c["blob"], "rb").read()
        layers = kvtc.decode(p, blob)
        kvtc.write_kv_safetensors(c["decoded"], layers, kvtc.read_blob_header(blob).start_position)
        kv = kvtc.read_kv_safetensors(c["kv"])
        open(c["exact"], "wb").write(kvtc.encode(p, kv.layers, kv.start_position, bit_exact=True))
except kvtc.KvtcError as e:
    out["error"] = {"code": e.code, "message": str(e)}
print(json.dumps(out))
`;

function py(job: Json): Json {
  const d = tempDir('kvtc-py-rope-');
  const jobFile = join(d, 'job.json');
  const script = join(d, 'run.py');
  writeFileSync(jobFile, JSON.stringify(job));
  writeFileSync(script, SCRIPT);
  const r = spawnSync(PY, [script, jobFile], { encoding: 'utf8', env: { ...process.env, PYTHONPATH: PKG, PYTHONDONTWRITEBYTECODE: '1' } });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

describe('Python runtime: profile format 2, RoPE per layer', () => {
  beforeAll(() => {
    if (!HAVE_PYTHON) throw new Error(MISSING_PYTHON);
  });
  it('reads format 1 (the fixture) with one RoPE on every layer', () => {
    const j = py({ profile: V1 });
    expect(j.id).toBe('b61faa184a576db6');
    expect(j.ropes).toEqual(Array(5).fill([10000, 8, 'half', 1, null]));
  });

  it('decodes Node blobs of a per-layer profile to Node\'s cache and encodes the same bytes (bit_exact)', async () => {
    const dir = v2Dir();
    const profile = await readProfile(dir);
    const codec = await codecFromProfile(profile);
    const d = tempDir('kvtc-py-rope-');
    const cases: Json[] = [];
    const node: { blob: Uint8Array; cache: Awaited<ReturnType<typeof codec.decode>>['cache'] }[] = [];
    try {
      // 60 + 7 positions: the longrope layer's short factors; 156 + 7: its long factors
      for (const [i, tokens] of [60, 156].entries()) {
        const cache = syntheticCache(tokens, 7, 3 + i);
        const { blob } = await codec.encode(cache);
        const { cache: back } = await codec.decode(blob);
        node.push({ blob, cache: back });
        const kv = join(d, `kv${i}.safetensors`);
        await writeKvCache(kv, cache);
        writeFileSync(join(d, `b${i}.kvtc`), blob);
        cases.push({ blob: join(d, `b${i}.kvtc`), kv, decoded: join(d, `py${i}.safetensors`), exact: join(d, `py${i}.kvtc`) });
      }
    } finally {
      await codec.release();
    }
    const j = py({ profile: dir, cases });
    expect(j.error).toBeUndefined();
    expect(j.id).toBe(profile.manifest.profile_id);
    expect(j.ropes).toEqual([[10000, 8, 'half', 1, null], null, [500000, 4, 'interleaved', 1.2, 'yarn'], [10000, 8, 'half', 1, null], [10000, 6, 'half', 1.1, 'longrope']]);
    for (const [i, c] of cases.entries()) {
      const { cache: pyc } = await readKvCache(c.decoded);
      let worst = 0;
      let scale = 0;
      for (let l = 0; l < 5; l++) {
        for (let k = 0; k < pyc.keys[l].length; k++) {
          worst = Math.max(worst, Math.abs(pyc.keys[l][k] - node[i].cache.keys[l][k]), Math.abs(pyc.values[l][k] - node[i].cache.values[l][k]));
          scale = Math.max(scale, Math.abs(node[i].cache.keys[l][k]));
        }
      }
      expect(worst / scale).toBeLessThan(1e-5);
      expect(Buffer.from(readFileSync(c.exact)).equals(Buffer.from(node[i].blob))).toBe(true);
    }
  });

  it('the reference decoder (scripts/kvtc_reference_decoder.py, written from the spec) decodes them to Node\'s cache', async () => {
    const dir = v2Dir();
    const profile = await readProfile(dir);
    const codec = await codecFromProfile(profile);
    const d = tempDir('kvtc-ref-rope-');
    try {
      for (const [i, tokens] of [60, 156].entries()) {
        const { blob } = await codec.encode(syntheticCache(tokens, 7, 3 + i));
        const { cache } = await codec.decode(blob);
        writeFileSync(join(d, `b${i}.kvtc`), blob);
        await writeKvCache(join(d, `node${i}.safetensors`), cache);
        const ref = spawnSync(PY, [join(PKG, '..', 'scripts', 'kvtc_reference_decoder.py'), dir, join(d, `b${i}.kvtc`), join(d, `ref${i}.npz`)], { encoding: 'utf8' });
        expect(ref.status, ref.stderr).toBe(0);
        const cmp = spawnSync(PY, ['-c', [
          'import sys, numpy as np, kvtc',
          'z = np.load(sys.argv[1]); kv = kvtc.read_kv_safetensors(sys.argv[2])',
          'num = max(float(np.max(np.abs(z[f"{w}_{l}"] - np.asarray(kv.layers[l][j], dtype=np.float32)))) for l in range(5) for j, w in enumerate(("key", "value")))',
          'den = max(float(np.max(np.abs(np.asarray(kv.layers[l][0], dtype=np.float32)))) for l in range(5))',
          'print(num / den)',
        ].join('\n'), join(d, `ref${i}.npz`), join(d, `node${i}.safetensors`)], { encoding: 'utf8', env: { ...process.env, PYTHONPATH: PKG } });
        expect(cmp.status, cmp.stderr).toBe(0);
        expect(Number(cmp.stdout)).toBeLessThan(1e-5);
      }
    } finally {
      await codec.release();
    }
  });

  it('refuses a format 2 profile whose groups name a layer twice', () => {
    const j = py({ profile: v2Dir((m) => (m.model.rope[1].layers = [1, 3])) });
    expect(j.error).toMatchObject({ code: 'PROFILE_INVALID' });
    expect(j.error.message).toMatch(/model\.rope\[1\]\.layers names layer 3, which model\.rope\[0\] names too/);
  });
});

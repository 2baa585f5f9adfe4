// The Python runtime's torch path (python/kvtc/_torch.py, run on PyTorch's CPU as device="torch:cpu")
// against the Node codec on profiles whose layers have different RoPE: the committed Gemma 3 270M
// profile (local layers θ 10⁴ and global layers θ 10⁶ in one plan) and python/tests/fixtures/profile-v2-rope
// (NoPE, interleaved partial yarn with an attention factor, llama3, longrope). Python writes a cache in
// each profile's distribution; Node encodes it; torch decodes Node's blob like Node does, torch encodes
// the same cache, and Node decodes that blob like Python's NumPy path and as close to the cache as its own.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readKvCache } from '../../src/model/kv-io.js';
import type { KvCache } from '../../src/model/types.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile } from '../../src/profile/read.js';
import { tempDir } from '../profile/helpers.js';

const PY = process.env.KVTC_TEST_PYTHON ?? 'python3';
const probe = spawnSync(PY, ['-c', 'import numpy, torch'], { encoding: 'utf8' });
// A missing Python, NumPy or torch is a set-up error: the suite fails saying what to install, never skips.
const MISSING = `the torch-path tests need ${PY} with NumPy and PyTorch (${probe.error?.message ?? probe.stderr?.trim()}); install them with \`${PY} -m pip install -r python/requirements-test.txt torch\` (CPU build: add --index-url https://download.pytorch.org/whl/cpu) or set KVTC_TEST_PYTHON to a Python that has them`;
const ROOT = join(import.meta.dirname, '..', '..');
const PKG = join(ROOT, 'python');
const PROFILES = [join(ROOT, 'kvtc-profiles', 'gemma3-270m'), join(PKG, 'tests', 'fixtures', 'profile-v2-rope')];

// step "make": a synthetic cache per profile (per plan μ + V·(z·√variance), keys rotated with each layer's RoPE);
// step "torch": torch-encode that cache, torch-decode Node's blob, NumPy-decode the torch blob.
const SCRIPT = `
import json, sys
import numpy as np
import kvtc
from kvtc import _rope
job = json.load(open(sys.argv[1]))
p = kvtc.read_profile(job["profile"])
if job["step"] == "make":
    T, start = job["tokens"], job["start"]
    rng = np.random.default_rng(5)
    tables = _rope.layer_tables(p.layer_ropes, p.head_dim, start, T, start + T)
    out = [[None, None] for _ in range(p.layers)]
    for plan in p.plans:
        z = rng.standard_normal((T, plan.rank)) * np.sqrt(np.maximum(plan.variances.astype(np.float64), 0))
        X = (plan.mean + z @ plan.basis.T.astype(np.float64)).astype(np.float32).reshape(T, len(plan.layers), p.kv_heads, p.head_dim).transpose(1, 2, 0, 3)
        for li, l in enumerate(plan.layers):
            x = np.ascontiguousarray(X[li])
            if plan.kind == "key" and tables[l] is not None:
                ca, sa, _, _, ia, ib = tables[l]
                x = _rope.rotate32(x, ca, sa, ia, ib)
            out[l][0 if plan.kind == "key" else 1] = x
    kvtc.write_kv_safetensors(job["kv"], [tuple(kv) for kv in out], start)
else:
    import torch
    kv = kvtc.read_kv_safetensors(job["kv"])
    layers = [(torch.from_numpy(k), torch.from_numpy(v)) for k, v in kv.layers]
    open(job["torch_blob"], "wb").write(kvtc.encode(p, layers, kv.start_position, device="torch:cpu"))
    node_blob = open(job["node_blob"], "rb").read()
    dec = kvtc.decode(p, node_blob, device="torch:cpu")
    kvtc.write_kv_safetensors(job["torch_of_node"], [(k.numpy(), v.numpy()) for k, v in dec], kv.start_position)
    kvtc.write_kv_safetensors(job["numpy_of_torch"], kvtc.decode(p, open(job["torch_blob"], "rb").read()), kv.start_position)
print(json.dumps({"ok": True}))
`;

function py(job: Record<string, unknown>): void {
  const d = tempDir('kvtc-py-torch-');
  writeFileSync(join(d, 'job.json'), JSON.stringify(job));
  writeFileSync(join(d, 'run.py'), SCRIPT);
  const r = spawnSync(PY, [join(d, 'run.py'), join(d, 'job.json')], {
    encoding: 'utf8',
    env: { ...process.env, PYTHONPATH: PKG, PYTHONDONTWRITEBYTECODE: '1' },
  });
  expect(r.status, r.stderr).toBe(0);
}

/** max |a − b| over every layer's K and V, divided by max |b| (the tensors' largest magnitude). */
function relDiff(a: KvCache, b: KvCache): number {
  let worst = 0;
  let scale = 0;
  for (let l = 0; l < b.layers; l++) {
    for (const [x, y] of [
      [a.keys[l], b.keys[l]],
      [a.values[l], b.values[l]],
    ]) {
      for (let i = 0; i < y.length; i++) {
        worst = Math.max(worst, Math.abs(x[i] - y[i]));
        scale = Math.max(scale, Math.abs(y[i]));
      }
    }
  }
  return worst / scale;
}

/** ‖x̂ − x‖ / ‖x‖ over every layer's K and V. */
function relError(dec: KvCache, orig: KvCache): number {
  let num = 0;
  let den = 0;
  for (let l = 0; l < orig.layers; l++) {
    for (const [x, y] of [
      [dec.keys[l], orig.keys[l]],
      [dec.values[l], orig.values[l]],
    ]) {
      for (let i = 0; i < y.length; i++) {
        num += (x[i] - y[i]) ** 2;
        den += y[i] ** 2;
      }
    }
  }
  return Math.sqrt(num / den);
}

describe('Python torch path vs the Node codec, RoPE per layer', () => {
  beforeAll(() => {
    if (probe.error || probe.status !== 0) throw new Error(MISSING);
  });

  for (const dir of PROFILES) {
    it(`${dir.slice(ROOT.length + 1)}: torch decodes Node's blob like Node, and Node decodes torch's blob like NumPy`, async () => {
      const profile = await readProfile(dir);
      const d = tempDir('kvtc-torch-node-');
      const f = (name: string) => join(d, name);
      // 196 tokens (64 compressed) from position 300: every layer's RoPE away from position 0
      py({ step: 'make', profile: dir, tokens: profile.manifest.settings.sink + profile.manifest.settings.window + 64, start: 300, kv: f('kv.safetensors') });
      const { cache } = await readKvCache(f('kv.safetensors'));
      const codec = await codecFromProfile(profile);
      let nodeOfNode: KvCache;
      try {
        const { blob } = await codec.encode(cache);
        writeFileSync(f('node.kvtc'), blob);
        nodeOfNode = (await codec.decode(blob)).cache;
        py({
          step: 'torch',
          profile: dir,
          kv: f('kv.safetensors'),
          node_blob: f('node.kvtc'),
          torch_blob: f('torch.kvtc'),
          torch_of_node: f('torch-of-node.safetensors'),
          numpy_of_torch: f('numpy-of-torch.safetensors'),
        });
        const nodeOfTorch = (await codec.decode(new Uint8Array(readFileSync(f('torch.kvtc'))))).cache;
        const torchOfNode = (await readKvCache(f('torch-of-node.safetensors'))).cache;
        const numpyOfTorch = (await readKvCache(f('numpy-of-torch.safetensors'))).cache;
        // float32 products in other orders on each side: within 1e-5 of the largest magnitude
        expect(relDiff(torchOfNode, nodeOfNode)).toBeLessThan(1e-5);
        expect(relDiff(nodeOfTorch, numpyOfTorch)).toBeLessThan(1e-5);
        // torch's codes are Node's but a few one-step rounding differences: the same reconstruction error
        const eNode = relError(nodeOfNode, cache);
        expect(Math.abs(relError(nodeOfTorch, cache) - eNode)).toBeLessThan(1e-3 + 0.01 * eNode);
      } finally {
        await codec.release();
      }
    }, 120_000);
  }
});

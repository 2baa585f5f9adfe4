// kvtc inspect on format-3 profiles (docs/profile-format.md §2.4) says what part of the model the
// profile covers: values of their own width, an MLA latent cache, the model layers and the shard,
// and that the fingerprint comes from a KV dump. The profiles are the committed Node-made fixtures
// the Python runtime also reads (scripts/make-python-fixtures.ts).
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from '../helpers/process.js';
import { kvtc } from '../model/helpers.js';

const FIXTURES = join(REPO, 'python', 'tests', 'fixtures');

describe('kvtc inspect: format-3 profiles', () => {
  it('an MLA latent profile names its key and value widths and the model layers it holds', async () => {
    const r = await kvtc('inspect', join(FIXTURES, 'profile-v3-mla'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/format v3/);
    expect(r.stdout).toMatch(/1 KV heads × 8 \(values × 24\)/);
    expect(r.stdout).toMatch(/\(from a KV dump\)/);
    expect(r.stdout).toMatch(/MLA latent: keys = the decoupled RoPE key \(8 wide\), values = the compressed KV \(24 wide\)/);
    expect(r.stdout).toMatch(/model layers 0,1,3 of 4/);
  });

  it("a shard profile names its rank, stage and KV heads; --json carries the manifest's shard", async () => {
    const dir = join(FIXTURES, 'profile-v3-shard');
    const r = await kvtc('inspect', dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/shard {3}tensor-parallel rank 1 of 2, pipeline stage 1 of 2: KV heads 2,3/);
    expect(r.stdout).toMatch(/model layers 3,4 of 5/);
    const j = await kvtc('inspect', dir, '--json');
    expect(j.code, j.stderr).toBe(0);
    expect(JSON.parse(j.stdout).manifest.shard).toEqual({ tp_rank: 1, tp_size: 2, pp_rank: 1, pp_size: 2, kv_heads: [2, 3] });
  });
});

// Pins the bytes a refactor must not change (issue 14): the committed profile as calibrate
// re-derives it, and the blob `kvtc encode` writes for a fixed captured cache with that profile.
// A change to any hash here is a change of behaviour, not of structure.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { kvtc, tempDir } from '../model/helpers.js';

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
/** The tensor bytes of a safetensors file (its header names the blob's path). */
const tensorSha256 = (path: string) => {
  const b = readFileSync(path);
  return createHash('sha256').update(b.subarray(8 + Number(b.readBigUInt64LE(0)))).digest('hex');
};

const PROFILE_JSON = 'b2e0038b21cb74daabcc8d0c14fafa9e1eec373e5ffc2b8318b0f231bdde8084'; // fingerprint v2 (spec_sha256) since the model-identity change
const PROFILE_TENSORS = 'e94ff196c73068d98239d3fdef3131bbc5560e321897d868940850999a23d022';
const CACHE = '077e3ca3f75bfadc977bdcbcd8f3fb75eb8ce5c174b360ac876e3fdc2a025a4a'; // its metadata names the fingerprint
const DECODED = 'f437d1fb6db935f4412fb859a977635a89ca37e34657c30730e5cc591f1b90d0';
const BLOB = '4acd8d92606d8384c1fda550133279111ffc5104cb3ed77d341f84e47c2dc682';

describe('pinned bytes', () => {
  it('calibrate re-derives the committed stories260k profile byte for byte', async () => {
    const committed = join(DEFAULT_PROFILES_DIR, 'stories260k');
    expect(sha256(join(committed, 'kvtc-profile.json'))).toBe(PROFILE_JSON);
    expect(sha256(join(committed, 'kvtc-profile.safetensors'))).toBe(PROFILE_TENSORS);
    const out = join(tempDir('kvtc-pin-'), 'p');
    const r = await kvtc('calibrate', '--out', out, '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(sha256(join(out, 'kvtc-profile.json'))).toBe(PROFILE_JSON);
    expect(sha256(join(out, 'kvtc-profile.safetensors'))).toBe(PROFILE_TENSORS);
  });

  it('kvtc encode writes the pinned blob for a fixed captured cache, and decode the pinned cache', async () => {
    const d = tempDir('kvtc-pin-');
    const kv = join(d, 'kv.safetensors');
    const blob = join(d, 'kv.kvtc');
    const c = await kvtc('capture', '--text', 'calibration-data/inaugural-1789-Washington.txt', '--max-tokens', '512', '--out', kv);
    expect(c.code, c.stderr).toBe(0);
    expect(sha256(kv)).toBe(CACHE);
    const e = await kvtc('encode', '--profile', join(DEFAULT_PROFILES_DIR, 'stories260k'), '--kv', kv, '--out', blob);
    expect(e.code, e.stderr).toBe(0);
    expect(sha256(blob)).toBe(BLOB);
    const restored = join(d, 'restored.safetensors');
    const r = await kvtc('decode', '--profile', join(DEFAULT_PROFILES_DIR, 'stories260k'), '--in', blob, '--out', restored);
    expect(r.code, r.stderr).toBe(0);
    expect(tensorSha256(restored)).toBe(DECODED);
  });
});

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readKvCache } from '../../src/model/kv-io.js';
import { DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { FIXTURE, kvtc, tempDir } from '../model/helpers.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');
let dir: string;
let kv: string;

beforeAll(async () => {
  dir = tempDir('kvtc-cli-');
  writeFileSync(join(dir, 'text.txt'), readFileSync(WIKITEXT_TEST, 'utf8').slice(0, 20_000));
  kv = join(dir, 'kv.safetensors');
  const r = await kvtc('capture', '--text', join(dir, 'text.txt'), '--max-tokens', '400', '--out', kv);
  expect(r.code, r.stderr).toBe(0);
});

describe('kvtc encode / decode', () => {
  it('round-trips a captured cache and reports tokens, bytes, both ratios and time', async () => {
    const blob = join(dir, 'kv.kvtc');
    const e = await kvtc('encode', '--profile', PROFILE, '--kv', kv, '--out', blob, '--json');
    expect(e.code, e.stderr).toBe(0);
    const j = JSON.parse(e.stdout);
    expect(j.tokens).toBe(400);
    expect(j.compressed_tokens).toBe(400 - 4 - 128);
    expect(j.ratio_compressed).toBeGreaterThan(15);
    expect(j.ratio_blob).toBeGreaterThan(1);
    expect(j.blob_bytes).toBe(readFileSync(blob).byteLength);
    expect(j.seconds.total).toBeGreaterThan(0);

    const out = join(dir, 'restored.safetensors');
    const d = await kvtc('decode', '--profile', PROFILE, '--in', blob, '--out', out);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toContain('decoded 400 tokens');
    const a = await readKvCache(kv);
    const b = await readKvCache(out);
    expect(b.cache.tokens).toBe(400);
    expect(b.cache.dtype).toBe(a.cache.dtype);
    let num = 0;
    let den = 0;
    for (let l = 0; l < a.cache.layers; l++) {
      for (let i = 0; i < a.cache.keys[l].length; i++) {
        num += (a.cache.keys[l][i] - b.cache.keys[l][i]) ** 2;
        den += a.cache.keys[l][i] ** 2;
      }
    }
    expect(Math.sqrt(num / den)).toBeLessThan(0.2);
  });

  it('human output names both ratios and the context', async () => {
    const r = await kvtc('encode', '--profile', PROFILE, '--kv', kv, '--out', join(dir, 'h.kvtc'));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/ratio, whole blob: +[\d.]+x/);
    expect(r.stdout).toMatch(/ratio, compressed tokens: +[\d.]+x +\(268 tokens/);
  });

  it('refuses to overwrite without --force, and bad inputs fail clearly without writing', async () => {
    const blob = join(dir, 'exists.kvtc');
    writeFileSync(blob, 'keep');
    expect((await kvtc('encode', '--profile', PROFILE, '--kv', kv, '--out', blob)).code).toBe(1);
    expect(readFileSync(blob, 'utf8')).toBe('keep');

    const garbage = join(dir, 'garbage.safetensors');
    writeFileSync(garbage, Buffer.from([1, 2, 3]));
    const g = await kvtc('encode', '--profile', PROFILE, '--kv', garbage, '--out', join(dir, 'g.kvtc'));
    expect(g.code).toBe(1);
    expect(g.stderr).toContain('SAFETENSORS_INVALID');
    expect(existsSync(join(dir, 'g.kvtc'))).toBe(false);

    const noProfile = await kvtc('encode', '--profile', join(dir, 'nope'), '--kv', kv, '--out', join(dir, 'n.kvtc'));
    expect(noProfile.code).toBe(1);
    expect(noProfile.stderr).toContain('does not exist');

    const trunc = join(dir, 'trunc.kvtc');
    const full = readFileSync(join(dir, 'kv.kvtc'));
    writeFileSync(trunc, full.subarray(0, full.length - 100));
    const t = await kvtc('decode', '--profile', PROFILE, '--in', trunc, '--out', join(dir, 't.safetensors'));
    expect(t.code).toBe(1);
    expect(t.stderr).toContain('BLOB_INVALID');
    expect(existsSync(join(dir, 't.safetensors'))).toBe(false);
  });

  it('a kv file from another model is refused with the fix', async () => {
    const other = join(dir, 'other.safetensors');
    writeFileSync(join(dir, 'short.txt'), 'Once upon a time there was a little robot who loved to read books about the sea.');
    expect((await kvtc('capture', '--model', FIXTURE, '--text', join(dir, 'short.txt'), '--out', other)).code).toBe(0);
    const r = await kvtc('encode', '--profile', PROFILE, '--kv', other, '--out', join(dir, 'o.kvtc'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('PROFILE_MISMATCH');
    expect(r.stderr).toContain('kvtc calibrate --model');
  });
});

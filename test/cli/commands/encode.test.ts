/**
 * `kvtc encode` against the model a cache records (src/profile/compat.ts checkCacheForProfile):
 * a cache from another model is refused with the message validate --model gives for that model,
 * a cache that records no model is left to the codec's shape checks. Round trips, ratios and
 * output files: test/codec/encode-decode-cli.test.ts.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readKvCache, writeKvCache } from '../../../src/model/kv-io.js';
import { describeModel } from '../../../src/model/load.js';
import { DEFAULT_PROFILES_DIR } from '../../../src/paths.js';
import { FIXTURE, kvtc, tempDir } from '../../model/helpers.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');
/** profile P was calibrated for model M (fingerprint F), but ROLE is N (fingerprint G, WHERE): DIFFERENCES */
const SHAPE =
  /^profile (?<profile>\S+) was calibrated for model stories260k \(fingerprint 9699b3e4089e0884\), but (?<role>.+?) is (?<name>\S+) \(fingerprint (?<id>[0-9a-f]{16}), (?<where>[^)]+)\): (?<differences>.+)$/;

let dir: string;
let stories: string;
let tiny: string;

beforeAll(async () => {
  dir = tempDir('kvtc-encode-');
  writeFileSync(join(dir, 'text.txt'), 'Once upon a time there was a little robot who loved to read books about the sea.');
  stories = join(dir, 'stories.safetensors');
  tiny = join(dir, 'tiny.safetensors');
  for (const [model, out] of [
    [undefined, stories],
    [FIXTURE, tiny],
  ] as const) {
    const r = await kvtc('capture', ...(model ? ['--model', model] : []), '--text', join(dir, 'text.txt'), '--out', out);
    expect(r.code, r.stderr).toBe(0);
  }
});

describe('kvtc encode with a cache from another model', () => {
  it('fails with the message shape of validate --model for that model, and the same fingerprint', async () => {
    const out = join(dir, 'o.kvtc');
    const e = await kvtc('encode', '--profile', PROFILE, '--kv', tiny, '--out', out, '--json');
    expect(e.code).toBe(1);
    expect(existsSync(out)).toBe(false);
    const err = JSON.parse(e.stdout).error;
    expect(err.code).toBe('PROFILE_MISMATCH');
    const enc = SHAPE.exec(err.message)?.groups;
    expect(enc, err.message).toBeDefined();
    expect(enc).toMatchObject({ role: 'the model that captured the cache', name: 'tiny-llama-fp16', where: tiny });
    expect(err.context.differences).toEqual([
      'layers is 5 in the profile, 2 in the model',
      'kv_heads is 4 in the profile, 1 in the model',
      'head_dim is 8 in the profile, 16 in the model',
      'kv_dtype is float32 in the profile, float16 in the model',
    ]);
    expect(err.fix).toMatch(/kvtc calibrate --model/);

    const v = await kvtc('validate', PROFILE, '--model', FIXTURE, '--json');
    expect(v.code).toBe(1);
    const check = JSON.parse(v.stdout).checks.find((c: { name: string }) => c.name === 'model');
    const [message, fix] = check.detail.split('; Pass --model');
    const val = SHAPE.exec(message)?.groups;
    expect(val, check.detail).toBeDefined();
    expect(val).toMatchObject({ profile: enc!.profile, role: 'the model being checked', name: 'tiny-llama-fp16', where: FIXTURE });
    expect(fix).toMatch(/kvtc calibrate --model /);
    // The cache records the fingerprint validate computes from the model directory.
    expect(enc!.id).toBe((await describeModel(FIXTURE)).fingerprint.id);
    expect(val!.id).toBe(enc!.id);
    // What the cache shows of its model is what validate finds in the model directory.
    for (const d of err.context.differences) expect(val!.differences).toContain(d);
  });

  it('a cache of the same shape from another model says only the fingerprint differs', async () => {
    const { cache } = await readKvCache(stories);
    const forged = join(dir, 'forged.safetensors');
    await writeKvCache(forged, cache, { model: 'stories260k-finetuned', fingerprint: '0123456789abcdef' });
    const e = await kvtc('encode', '--profile', PROFILE, '--kv', forged, '--out', join(dir, 'f.kvtc'));
    expect(e.code).toBe(1);
    expect(e.stderr).toMatch(
      /PROFILE_MISMATCH\]: profile \S+ was calibrated for model stories260k \(fingerprint 9699b3e4089e0884\), but the model that captured the cache is stories260k-finetuned \(fingerprint 0123456789abcdef, \S+forged\.safetensors\): the fingerprint differs \(same cache shape: another model, export or RoPE\)/,
    );
  });

  it("a cache that records no model (another tool wrote it) is encoded; the bundled model's own cache too", async () => {
    const { cache } = await readKvCache(stories);
    const anonymous = join(dir, 'anonymous.safetensors');
    await writeKvCache(anonymous, cache, {});
    for (const kv of [anonymous, stories]) {
      const r = await kvtc('encode', '--profile', PROFILE, '--kv', kv, '--out', join(dir, `${kv.length}.kvtc`), '--json');
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).tokens).toBe(cache.tokens);
    }
  });

  it('a short cache: the compressed-tokens ratio is n/a, and says why', async () => {
    const r = await kvtc('encode', '--profile', PROFILE, '--kv', stories, '--out', join(dir, 'short.kvtc'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^encoded \d+ tokens → \S+short\.kvtc \([\d.]+ (B|KiB|MiB), from [\d.]+ (B|KiB|MiB) as fp16\)/);
    expect(r.stdout).toMatch(
      /ratio, compressed tokens: +n\/a — the cache \(\d+ tokens\) is not longer than sink \+ window \(4 \+ 128\), nothing was compressed/,
    );
    expect(r.stdout).toMatch(/time: .* on cpu$/m);
  });
});

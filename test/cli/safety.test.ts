/**
 * Issue 10's reproductions, as a user meets them: commands that fail after the codec's worker
 * thread started exit by themselves (real child processes), ordinary failures are typed errors
 * (no "kvtc bug", no stack trace), bad options are refused before any work.
 */
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readKvCache, writeKvCache } from '../../src/model/kv-io.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { FIXTURE, kvtc, tempDir } from '../model/helpers.js';
import { runKvtc } from '../helpers/process.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');
// ≥ 16 MiB of fp16 KV for stories260K (640 bytes per token): encode/decode start the transform thread.
const LARGE_TOKENS = 27_000;
let dir: string;
let small: KvCache;
/**
 * The committed profile with model.max_positions raised past LARGE_TOKENS: stories260K has 512
 * positions, too few for a cache large enough to start the transform thread. max_positions only
 * bounds where a blob may sit (it is outside profile_id), so the copy still reads and decodes.
 */
let LONG_PROFILE: string;

/** `cache` repeated along the token axis to `tokens` tokens (real values, real distribution). */
function tile(cache: KvCache, tokens: number, kvHeads = cache.kvHeads): KvCache {
  const per = kvHeads * cache.headDim;
  const grow = (a: Float32Array) => {
    const out = new Float32Array(tokens * per);
    for (let h = 0; h < kvHeads; h++) {
      const src = a.subarray((h % cache.kvHeads) * cache.tokens * cache.headDim, ((h % cache.kvHeads) + 1) * cache.tokens * cache.headDim);
      for (let t = 0; t < tokens; t += cache.tokens) {
        const n = Math.min(cache.tokens, tokens - t);
        out.set(src.subarray(0, n * cache.headDim), (h * tokens + t) * cache.headDim);
      }
    }
    return out;
  };
  return { ...cache, kvHeads, tokens, keys: cache.keys.map(grow), values: cache.values.map(grow) };
}

beforeAll(async () => {
  dir = tempDir('kvtc-safety-');
  writeFileSync(join(dir, 'text.txt'), readFileSync(WIKITEXT_TEST, 'utf8').slice(0, 20_000));
  const kv = join(dir, 'kv.safetensors');
  const r = await kvtc('capture', '--text', join(dir, 'text.txt'), '--max-tokens', '500', '--out', kv);
  expect(r.code, r.stderr).toBe(0);
  small = (await readKvCache(kv)).cache;
  LONG_PROFILE = join(dir, 'long-profile');
  cpSync(PROFILE, LONG_PROFILE, { recursive: true });
  const manifestPath = join(LONG_PROFILE, 'kvtc-profile.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  manifest.model.max_positions = 65_536;
  writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('commands exit promptly after an error (no thread left alive)', () => {
  it('decode of a corrupted blob of a large cache: BLOB_INVALID, exits within seconds', async () => {
    const kv = join(dir, 'large.safetensors');
    await writeKvCache(kv, tile(small, LARGE_TOKENS));
    const blob = join(dir, 'large.kvtc');
    const e = await kvtc('encode', '--profile', LONG_PROFILE, '--kv', kv, '--out', blob);
    expect(e.code, e.stderr).toBe(0);
    const bytes = readFileSync(blob);
    bytes[bytes.length >> 1] ^= 0xff;
    writeFileSync(blob, bytes);
    const r = await runKvtc(['decode', '--profile', LONG_PROFILE, '--in', blob, '--out', join(dir, 'never.safetensors')], {
      deadlineMs: 30_000,
    });
    expect(r.hung).toBe(false);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('BLOB_INVALID');
    expect(r.stderr).not.toContain('INTERNAL');
    expect(existsSync(join(dir, 'never.safetensors'))).toBe(false);
  });

  it('encode of a large cache with the wrong head count: PROFILE_MISMATCH, exits within seconds', async () => {
    const kv = join(dir, 'wrong-heads.safetensors');
    await writeKvCache(kv, tile(small, LARGE_TOKENS, 6));
    const r = await runKvtc(['encode', '--profile', PROFILE, '--kv', kv, '--out', join(dir, 'never.kvtc')], { deadlineMs: 30_000 });
    expect(r.hung).toBe(false);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('PROFILE_MISMATCH');
    expect(existsSync(join(dir, 'never.kvtc'))).toBe(false);
  });

  it('bench with a profile for another model: PROFILE_MISMATCH before any prefill, exits', async () => {
    const r = await runKvtc(['bench', '--model', FIXTURE, '--profile', PROFILE, '--quick'], { deadlineMs: 30_000 });
    expect(r.hung).toBe(false);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('PROFILE_MISMATCH');
    // Before any prefill: no bench stage started (the deadline above is only a hang guard).
    expect(r.stderr).not.toMatch(/warming up|recompute|prefill/);
  });
});

describe('ordinary failures are typed errors, not kvtc bugs', () => {
  const noBug = (r: { code: number; stderr: string }) => {
    expect(r.code).not.toBe(70);
    expect(r.stderr).not.toContain('INTERNAL');
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  };

  it('--out under a file, or naming a directory, is refused before the work', async () => {
    const file = join(dir, 'a-file');
    writeFileSync(file, 'x');
    const kv = join(dir, 'kv.safetensors');
    for (const out of [join(file, 'x.kvtc'), dir]) {
      const r = await kvtc('encode', '--profile', PROFILE, '--kv', kv, '--out', out);
      noBug(r);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('OUTPUT_UNWRITABLE');
    }
    const c = await kvtc('calibrate', '--out', join(file, 'profile'));
    noBug(c);
    expect(c.stderr).toContain('OUTPUT_UNWRITABLE');
    const e = await kvtc('evaluate', '--subjects', 'anatomy', '--limit', '2', '--report', join(file, 'r.md'));
    noBug(e);
    expect(e.stderr).toContain('OUTPUT_UNWRITABLE');
  });

  it("--ratio '' and --ratio , are usage errors before any work", async () => {
    for (const v of ['', ',']) {
      const out = join(dir, `ratio-${v.length}`);
      const r = await kvtc('calibrate', '--ratio', v, '--out', out);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('--ratio');
      // Before any work: the first stage (loading the model) never started.
      expect(r.stderr).not.toContain('loading model');
      expect(existsSync(out)).toBe(false);
    }
  });
});

describe('calibrating into the model directory', () => {
  it('--force replaces only the two profile files: every model file and an unrelated file stay byte-identical', async () => {
    const model = join(dir, 'model-copy');
    cpSync(DEFAULT_MODEL_DIR, model, { recursive: true });
    writeFileSync(join(model, 'NOTES.md'), 'my notes\n');
    mkdirSync(join(model, 'kvtc-profile.json.d'));
    const snapshot = () =>
      Object.fromEntries(
        (readdirSync(model, { recursive: true }) as string[])
          .filter((f) => statSync(join(model, f)).isFile() && !f.startsWith('kvtc-profile.'))
          .map((f) => [f, readFileSync(join(model, f)).toString('base64')]),
      );
    const before = snapshot();
    for (let i = 0; i < 2; i++) {
      const r = await kvtc(
        'calibrate',
        '--model',
        model,
        '--out',
        model,
        '--force',
        '--tokens',
        '512',
        '--heldout',
        '256',
        '--report-tokens',
        '256',
        '--grouping',
        'layer',
      );
      expect(r.code, r.stderr).toBe(0);
    }
    expect(snapshot()).toEqual(before);
    expect(existsSync(join(model, 'kvtc-profile.json'))).toBe(true);
    expect(existsSync(join(model, 'kvtc-profile.safetensors'))).toBe(true);
    expect(readdirSync(model).filter((f) => f.includes('.tmp'))).toEqual([]);
    const v = await kvtc('validate', model, '--model', model);
    expect(v.code, v.stdout + v.stderr).toBe(0);
  });
});

/**
 * `kvtc bench` as a person reads it: the tables printBench draws from a real run on the bundled
 * model with its committed profile (a user's model: nothing is built or cached), and the
 * --clear-cache message. The full --json run with the random GQA model: test/bench/bench.test.ts.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR } from '../../../src/paths.js';
import { kvtc } from '../../model/helpers.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');
const root = mkdtempSync(join(tmpdir(), 'kvtc-bench-cli-'));
const cacheDir = join(root, 'bench-cache');
const before = process.env.KVTC_BENCH_CACHE;
let out: string;

beforeAll(async () => {
  process.env.KVTC_BENCH_CACHE = cacheDir;
  const r = await kvtc('bench', '--model', DEFAULT_MODEL_DIR, '--profile', PROFILE, '--quick', '--repeats', '1', '--quiet');
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toBe('');
  out = r.stdout;
}, 120_000);

afterAll(() => {
  if (before === undefined) delete process.env.KVTC_BENCH_CACHE;
  else process.env.KVTC_BENCH_CACHE = before;
  rmSync(root, { recursive: true, force: true });
});

/** The rows of the table whose header line starts with `head` (a row has spaces wherever the ─── rule has its gaps). */
function rows(head: string): string[][] {
  const lines = out.split('\n');
  const at = lines.findIndex((l) => l.startsWith(head));
  expect(at, head).toBeGreaterThan(0);
  const rule = lines[at + 1];
  const gaps = [...rule].flatMap((c, i) => (c === ' ' ? [i] : []));
  const body: string[][] = [];
  for (const l of lines.slice(at + 2)) {
    if (!l.trim() || gaps.some((i) => i < l.length && l[i] !== ' ')) break;
    body.push(l.trim().split(/\s{2,}/));
  }
  return body;
}

/** "86.6 KiB" → bytes (to the printed precision). */
const bytes = (s: string) => {
  const [n, u] = s.split(' ');
  return Number(n) * { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[u as 'B']!;
};

describe('kvtc bench on a user model with its profile', () => {
  it('heads with the machine and the method, names the model, its shape, the cache and the profile', () => {
    expect(out).toMatch(/^kvtc bench — .+, \d+ cores, \d+ GiB, .+, Node v\d+\.\d+\.\d+, onnxruntime-node [\d.]+; load average [\d. ]+\n/);
    expect(out).toMatch(/\nMedians over 1 runs \(recompute: 1\), with \(min–max\)\. .*GPU: not measured/);
    // --quick caps the cache at 512 tokens; stories260K has 512 positions.
    expect(out).toContain('\n## stories260k: 5 layers, 8 query / 4 KV heads × 8, float32 KV — cache of 512 tokens = 320.0 KiB as fp16\n');
    expect(out).toContain(`\nprofile ${PROFILE}\n`);
    expect(out).toMatch(/\nbench took [\d.]+ (s|ms)\.$/);
  });

  it('throughput rows: the limits (memcpy, zlib) beside kvtc, each median within its min–max', () => {
    const t = rows('operation');
    expect(t.map((r) => r[0])).toEqual([
      'memcpy',
      'zlib deflate',
      'zlib inflate',
      'kvtc encode',
      'kvtc decode',
      ...t.slice(5).map((r) => r[0]),
    ]);
    for (const [name, span, mbps] of t) {
      expect(span, name).toMatch(/^[\d.]+ (µs|ms|s) \([\d.]+ (µs|ms|s)–[\d.]+ (µs|ms|s)\)$/);
      expect(Number(mbps), name).toBeGreaterThan(0);
    }
  });

  it('the ratio table: kvtc and the baselines on the same cache, ratio = fp16 bytes / stored bytes', () => {
    const c = rows('codec');
    expect(c.map((r) => r[0])).toEqual(['kvtc', 'fp16', 'int8', 'int4', 'kivi2']);
    for (const [name, stored, ratio] of c) {
      // 320.0 KiB of fp16 over the stored bytes, to the printed precision (0.1 KiB, 0.01x).
      expect(Number(ratio.replace('x', '')), name).toBeCloseTo((320 * 1024) / bytes(stored), 1);
    }
    expect(c.find((r) => r[0] === 'fp16')![2]).toBe('1.00x');
    const kvtcCompressed = Number(
      /kvtc over its compressed tokens only \(sink\/window tokens and their bytes left out\): ([\d.]+)x/.exec(out)?.[1],
    );
    expect(kvtcCompressed).toBeGreaterThan(Number(c[0][2].replace('x', '')));
    // The blob restored at 512 tokens is the one the ratio table measured.
    const r = rows('context');
    expect(r.map((x) => x[0])).toEqual(['256', '512']);
    expect(r[1][2]).toBe(c[0][1]);
    for (const [ctx, fp16, , recompute, restore, speedup] of r) {
      expect(bytes(fp16), ctx).toBe(Number(ctx) * 640);
      const median = (s: string) => {
        const [n, u] = s.split(' ');
        return Number(n) * { µs: 1e-6, ms: 1e-3, s: 1 }[u as 's']!;
      };
      // Within the rounding of the printed medians (3 significant digits) and speedup.
      expect(Math.abs(Number(speedup.replace('x', '')) / (median(recompute) / median(restore)) - 1), ctx).toBeLessThan(0.03);
    }
  });

  it('builds nothing for a user model: the bench cache stays empty and is not mentioned', () => {
    expect(existsSync(cacheDir) ? readdirSync(cacheDir) : []).toEqual([]);
    expect(out).not.toContain('bench cache:');
  });
});

describe('kvtc bench --clear-cache', () => {
  it('says there is nothing to remove when kvtc made nothing there', async () => {
    const r = await kvtc('bench', '--clear-cache');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`the bench cache ${cacheDir} holds nothing kvtc made: nothing to remove`);
  });
});

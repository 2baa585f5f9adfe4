import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { benchCacheInfo, clearBenchCache, noteCacheEntry } from '../../src/bench/bench-cache.js';
import { kvtc } from '../model/helpers.js';

describe('bench cache', () => {
  const before = process.env.KVTC_BENCH_CACHE;
  let root: string;
  afterEach(() => {
    if (before === undefined) delete process.env.KVTC_BENCH_CACHE;
    else process.env.KVTC_BENCH_CACHE = before;
    rmSync(root, { recursive: true, force: true });
  });

  it('--clear-cache removes exactly the entries kvtc recorded; other files in the directory stay', async () => {
    root = mkdtempSync(join(tmpdir(), 'kvtc-benchcache-'));
    process.env.KVTC_BENCH_CACHE = root;
    writeFileSync(join(root, 'mine.txt'), 'user file');
    mkdirSync(join(root, 'gqa-lookalike'));
    const dir = await noteCacheEntry('gqa-l4-test');
    mkdirSync(join(dir, 'model'), { recursive: true });
    writeFileSync(join(dir, 'model', 'model.onnx'), new Uint8Array(1000));
    await noteCacheEntry('gqa-l4-test'); // recorded once
    const info = await benchCacheInfo();
    expect(info.entries).toEqual(['gqa-l4-test']);
    expect(info.bytes).toBe(1000);
    const r = await kvtc('bench', '--clear-cache', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ cache_dir: root, removed: ['gqa-l4-test'], bytes_freed: 1000 });
    expect(existsSync(dir)).toBe(false);
    expect(readFileSync(join(root, 'mine.txt'), 'utf8')).toBe('user file');
    expect(existsSync(join(root, 'gqa-lookalike'))).toBe(true);
    expect((await clearBenchCache()).entries).toEqual([]);
  });

  it('an empty cache directory kvtc made is removed with its entries', async () => {
    root = mkdtempSync(join(tmpdir(), 'kvtc-benchcache-'));
    process.env.KVTC_BENCH_CACHE = join(root, 'cache');
    await noteCacheEntry('stories260k');
    mkdirSync(join(root, 'cache', 'stories260k'));
    await clearBenchCache();
    expect(existsSync(join(root, 'cache'))).toBe(false);
  });
});

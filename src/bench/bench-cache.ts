/**
 * The bench cache: random models and profiles the bench builds once and reuses (about 700 MB for
 * the default GQA model), under $KVTC_BENCH_CACHE or os.tmpdir()/kvtc-bench. kvtc records every
 * entry it creates in an index file and `kvtc bench --clear-cache` removes exactly those, so a
 * KVTC_BENCH_CACHE pointed at a directory with other files in it loses nothing else.
 */
import { existsSync, readdirSync, rmdirSync, statSync } from 'node:fs';
import { appendFile, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const INDEX = '.kvtc-bench-entries';

export function benchCacheDir(): string {
  return process.env.KVTC_BENCH_CACHE ?? join(tmpdir(), 'kvtc-bench');
}

async function entries(): Promise<string[]> {
  const file = join(benchCacheDir(), INDEX);
  if (!existsSync(file)) return [];
  return [
    ...new Set(
      (await readFile(file, 'utf8')).split('\n').filter((n) => n && !n.includes('/') && !n.includes('\\') && n !== '.' && n !== '..'),
    ),
  ];
}

/** Records that kvtc created `<cache>/<name>` (call before writing into it). */
export async function noteCacheEntry(name: string): Promise<string> {
  const dir = benchCacheDir();
  await mkdir(dir, { recursive: true });
  if (!(await entries()).includes(name)) await appendFile(join(dir, INDEX), `${name}\n`);
  return join(dir, name);
}

function bytesUnder(path: string): number {
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) return 0;
  if (!st.isDirectory()) return st.size;
  return readdirSync(path).reduce((a, n) => a + bytesUnder(join(path, n)), 0);
}

export interface CacheInfo {
  dir: string;
  entries: string[];
  bytes: number;
}

/** What the cache holds now. */
export async function benchCacheInfo(): Promise<CacheInfo> {
  const dir = benchCacheDir();
  const list = (await entries()).filter((n) => existsSync(join(dir, n)));
  return { dir, entries: list, bytes: list.reduce((a, n) => a + bytesUnder(join(dir, n)), 0) };
}

/** Removes the entries kvtc created (and the directory, when nothing else is left in it). */
export async function clearBenchCache(): Promise<CacheInfo> {
  const info = await benchCacheInfo();
  for (const n of info.entries) await rm(join(info.dir, n), { recursive: true, force: true });
  await rm(join(info.dir, INDEX), { force: true });
  try {
    rmdirSync(info.dir); // only succeeds when empty: other files in the directory stay
  } catch {
    /* not empty or absent */
  }
  return info;
}

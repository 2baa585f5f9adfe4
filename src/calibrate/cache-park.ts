// Tested by test/calibrate/cache-park.test.ts and test/calibrate/two-level-calibrate.test.ts.
/**
 * Held-out caches (tuning and report), read one at a time. For a large model they are gigabytes
 * (4,096 tuning and 8,192 report tokens of Llama 3.1 8B geometry: 1 and 2 GiB of float32 KV) that
 * the fit would otherwise hold beside its own memory, so with the two-level fit they are parked on
 * disk: stored as they are (float32, bit for bit) in a folder kvtc creates under the temporary
 * directory (feature-spill.ts spillRoot) and removes when done; nothing else is touched. The
 * fit reads only the layers each basis needs; the measurements read one cache at a time.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { KvKind } from '../codec/types.js';
import { invariant } from '../errors.js';
import type { KvCache } from '../model/types.js';
import { ownTempDir, removeOwnTempDir, spillRoot } from './feature-spill.js';

/** One kind's arrays of some layers: what a basis's features are gathered from. */
export interface CachePick {
  kind: KvKind;
  layers: number[];
}

/** Held-out caches, in memory or on disk. */
export interface CacheSet {
  /** Each cache's token count (sizing a blob needs nothing else). */
  readonly meta: readonly { tokens: number }[];
  /**
   * Cache i. With `pick`, only that kind's arrays of those layers are read; the others are empty
   * (gatherFeatures reads no more).
   */
  get(i: number, pick?: CachePick): Promise<KvCache>;
  /** Lets go of what is held in memory (the set is not used again). */
  drop(): void;
}

/** Caches already in memory. */
export class HeldCaches implements CacheSet {
  constructor(private caches: KvCache[]) {}
  get meta(): readonly { tokens: number }[] {
    return this.caches;
  }
  get(i: number): Promise<KvCache> {
    invariant(i >= 0 && i < this.caches.length, `Error in HeldCaches.get: no cache ${i}`);
    return Promise.resolve(this.caches[i]);
  }
  drop(): void {
    this.caches = [];
  }
}

export function cacheSet(x: KvCache[] | CacheSet): CacheSet {
  return Array.isArray(x) ? new HeldCaches(x) : x;
}

type Shape = Omit<KvCache, 'keys' | 'values'> & { keyLengths: number[]; valueLengths: number[]; at: number };

export class ParkedCaches implements CacheSet {
  private readonly shapes: Shape[] = [];
  private end = 0;
  private disposed = false;

  private constructor(
    private readonly dir: string,
    private readonly handle: FileHandle,
  ) {}

  static async create(root = spillRoot()): Promise<ParkedCaches> {
    const dir = await ownTempDir(root, 'kvtc-park-');
    return new ParkedCaches(dir, await open(join(dir, 'caches.f32'), 'wx+'));
  }

  /** Bytes on disk. */
  get bytes(): number {
    return this.end;
  }

  get count(): number {
    return this.shapes.length;
  }

  get meta(): readonly { tokens: number }[] {
    return this.shapes;
  }

  /** Writes `cache` out; the caller may drop it. */
  async add(cache: KvCache): Promise<void> {
    invariant(!this.disposed, 'Error in ParkedCaches.add: already removed');
    const { keys, values, ...rest } = cache;
    this.shapes.push({ ...rest, keyLengths: keys.map((k) => k.length), valueLengths: values.map((v) => v.length), at: this.end });
    for (const a of [...keys, ...values]) {
      let done = 0;
      const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
      while (done < bytes.length) done += (await this.handle.write(bytes, done, bytes.length - done, this.end + done)).bytesWritten;
      this.end += a.byteLength;
    }
  }

  private async read(n: number, at: number): Promise<Float32Array> {
    const a = new Float32Array(n);
    const buf = new Uint8Array(a.buffer);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await this.handle.read(buf, got, buf.length - got, at + got);
      invariant(bytesRead > 0, `Error in ParkedCaches.get: ${this.dir} ended early`);
      got += bytesRead;
    }
    return a;
  }

  /** Cache i, read back exactly as it was added (with `pick`, only those arrays). */
  async get(i: number, pick?: CachePick): Promise<KvCache> {
    invariant(!this.disposed, 'Error in ParkedCaches.get: already removed');
    invariant(i >= 0 && i < this.shapes.length, `Error in ParkedCaches.get: no cache ${i}`);
    const s = this.shapes[i];
    const wanted = (kind: KvKind, l: number) => !pick || (pick.kind === kind && pick.layers.includes(l));
    let at = s.at;
    const keys: Float32Array[] = [];
    for (const [l, n] of s.keyLengths.entries()) {
      keys.push(wanted('key', l) ? await this.read(n, at) : new Float32Array(0));
      at += 4 * n;
    }
    const values: Float32Array[] = [];
    for (const [l, n] of s.valueLengths.entries()) {
      values.push(wanted('value', l) ? await this.read(n, at) : new Float32Array(0));
      at += 4 * n;
    }
    const { keyLengths: _k, valueLengths: _v, at: _a, ...cache } = s;
    return { ...cache, keys, values };
  }

  /** Every cache, read back exactly as they were added. */
  async restore(): Promise<KvCache[]> {
    const out: KvCache[] = [];
    for (let i = 0; i < this.shapes.length; i++) out.push(await this.get(i));
    return out;
  }

  /** Nothing is held in memory; the file stays until dispose(). */
  drop(): void {}

  /** Closes and deletes what this object wrote (its own folder only); idempotent. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.handle.close().catch(() => undefined);
    await removeOwnTempDir(this.dir);
  }
}

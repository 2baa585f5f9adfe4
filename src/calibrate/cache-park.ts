// Tested by test/calibrate/two-level-calibrate.test.ts.
/**
 * Report caches parked on disk while the bases are fitted: they are only measured at the end,
 * and for a large model they are gigabytes (8,192 report tokens of Llama 3.1 8B geometry: 2 GiB
 * of float32 KV) that the fit would otherwise have to hold beside its own memory. Stored as they
 * are (float32, bit for bit), in a folder kvtc creates under the temporary directory
 * (feature-spill.ts spillRoot) and removes when done; nothing else is touched.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { invariant } from '../errors.js';
import type { KvCache } from '../model/types.js';
import { ownTempDir, removeOwnTempDir, spillRoot } from './feature-spill.js';

type Shape = Omit<KvCache, 'keys' | 'values'> & { keyLengths: number[]; valueLengths: number[]; at: number };

export class ParkedCaches {
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

  /** Writes `cache` out; the caller may drop it. */
  async add(cache: KvCache): Promise<void> {
    invariant(!this.disposed, 'Error in ParkedCaches.add: already removed');
    const { keys, values, ...rest } = cache;
    this.shapes.push({ ...rest, keyLengths: keys.map((k) => k.length), valueLengths: values.map((v) => v.length), at: this.end });
    for (const a of [...keys, ...values]) {
      await this.handle.write(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), 0, a.byteLength, this.end);
      this.end += a.byteLength;
    }
  }

  /** The caches, read back exactly as they were added. */
  async restore(): Promise<KvCache[]> {
    invariant(!this.disposed, 'Error in ParkedCaches.restore: already removed');
    const out: KvCache[] = [];
    for (const s of this.shapes) {
      let at = s.at;
      const read = async (n: number) => {
        const a = new Float32Array(n);
        const buf = new Uint8Array(a.buffer);
        let got = 0;
        while (got < buf.length) {
          const { bytesRead } = await this.handle.read(buf, got, buf.length - got, at + got);
          invariant(bytesRead > 0, `Error in ParkedCaches.restore: ${this.dir} ended early`);
          got += bytesRead;
        }
        at += buf.length;
        return a;
      };
      const keys: Float32Array[] = [];
      for (const n of s.keyLengths) keys.push(await read(n));
      const values: Float32Array[] = [];
      for (const n of s.valueLengths) values.push(await read(n));
      const { keyLengths: _k, valueLengths: _v, at: _a, ...cache } = s;
      out.push({ ...cache, keys, values });
    }
    return out;
  }

  /** Closes and deletes what this object wrote (its own folder only); idempotent. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.handle.close().catch(() => undefined);
    await removeOwnTempDir(this.dir);
  }
}

// Tested by test/calibrate/two-level-calibrate.test.ts.
/**
 * Fit features spilled to disk in float16 between the two passes of the two-level fit
 * (src/fit/two-level.ts): the second pass needs the per-layer bases, which need the whole first
 * pass. One file of rows per stream (a kind's features over all layers, [tokens, P]), in a
 * folder kvtc creates under the temporary directory and removes when done; nothing else is
 * touched. float16 keeps 11 significant bits: relative rounding 2^-11 per feature, noise far
 * below what the fit resolves (its covariance error is ~2^-22 of the variance, in expectation
 * zero). The float32 → float16 cast runs on ONNX Runtime (round to nearest even).
 */
import { constants, rmSync } from 'node:fs';
import { access, mkdtemp, open, rm, statfs, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as ortTypes from 'onnxruntime-node';
import { invariant, KvtcError } from '../errors.js';

/**
 * Folders this process created for spills and has not yet removed: removed on exit too (a second
 * Ctrl-C quits at once, without the finally blocks that normally remove them).
 */
const live = new Set<string>();
let hooked = false;

/** A folder of our own under `root`, removed on exit if it is still there (forget() when removed). */
export async function ownTempDir(root: string, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(root, prefix));
  live.add(dir);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const d of live) rmSync(d, { recursive: true, force: true });
    });
  }
  return dir;
}

/** Removes a folder made by ownTempDir. */
export async function removeOwnTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  live.delete(dir);
}

/** Where spills go: $KVTC_SPILL_DIR, else the system's temporary directory. */
export function spillRoot(): string {
  return process.env.KVTC_SPILL_DIR || tmpdir();
}

/** Free bytes on the file system of `dir` (null where the platform cannot tell). */
export async function freeBytes(dir: string): Promise<number | null> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  } catch {
    return null;
  }
}

const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;

/** Refuses (IO_ERROR) before any work when `bytes` will not fit beside what the disk holds. */
export async function checkSpillSpace(bytes: number, root = spillRoot()): Promise<void> {
  try {
    await access(root, constants.W_OK);
  } catch (e) {
    throw new KvtcError('IO_ERROR', `the two-level fit spills its fit features to ${root}, which is not a writable directory`, {
      fix: process.env.KVTC_SPILL_DIR
        ? 'Point KVTC_SPILL_DIR at an existing writable directory, or unset it.'
        : 'Make the temporary directory writable, or set KVTC_SPILL_DIR.',
      context: { dir: root },
      cause: e,
    });
  }
  const free = await freeBytes(root);
  if (free !== null && bytes > free * 0.95)
    throw new KvtcError(
      'IO_ERROR',
      `the two-level fit spills ${gib(bytes)} of float16 fit features to ${root}, which has ${gib(free)} free`,
      {
        fix: 'Free disk space, point KVTC_SPILL_DIR at a larger disk, or lower --tokens.',
        context: { bytes, free, dir: root },
      },
    );
}

class Stream {
  rows = 0;
  constructor(
    readonly file: string,
    readonly handle: FileHandle,
    readonly width: number,
  ) {}
}

export class FeatureSpill {
  private readonly streams = new Map<string, Stream>();
  private cast: { session: ortTypes.InferenceSession; ort: typeof ortTypes } | undefined;
  private disposed = false;

  private constructor(readonly dir: string) {}

  static async create(root = spillRoot()): Promise<FeatureSpill> {
    return new FeatureSpill(await ownTempDir(root, 'kvtc-spill-'));
  }

  /** Bytes written so far. */
  get bytes(): number {
    let b = 0;
    for (const s of this.streams.values()) b += s.rows * s.width * 2;
    return b;
  }

  rows(name: string): number {
    return this.streams.get(name)?.rows ?? 0;
  }

  private async castSession() {
    if (!this.cast) {
      const { GraphBuilder } = await import('../onnx/builder.js');
      const { createSession, ort, CODEC_SESSION } = await import('../onnx/session.js');
      const g = new GraphBuilder('kvtc_spill_cast');
      const x = g.input('x', 'float32', ['tokens', 'features']);
      g.output(g.op('Cast', [x], { to: 10 }), 'h', 'float16', ['tokens', 'features']);
      this.cast = { session: await createSession(g.toModel(), CODEC_SESSION), ort };
    }
    return this.cast;
  }

  /** Appends X: Float32Array // [tokens, width] to stream `name` as float16 rows. */
  async append(name: string, X: Float32Array, tokens: number, width: number): Promise<void> {
    invariant(!this.disposed, 'Error in FeatureSpill.append: the spill was removed');
    invariant(X.length >= tokens * width, `Error in FeatureSpill.append: X length (${X.length}) < tokens·width`);
    if (tokens === 0) return;
    let s = this.streams.get(name);
    if (!s) {
      const file = join(this.dir, `${name.replace(/[^a-z0-9_-]/gi, '_')}.f16`);
      s = new Stream(file, await open(file, 'wx+'), width);
      this.streams.set(name, s);
    }
    invariant(s.width === width, `Error in FeatureSpill.append: stream ${name} is ${s.width} wide, got ${width}`);
    const { session, ort } = await this.castSession();
    const x = X.length === tokens * width && X.byteOffset === 0 && X.buffer.byteLength === X.byteLength ? X : X.slice(0, tokens * width);
    const out = await session.run({ x: new ort.Tensor('float32', x, [tokens, width]) });
    const h = out.h.data as Uint16Array;
    await s.handle.write(new Uint8Array(h.buffer, h.byteOffset, h.byteLength));
    out.h.dispose?.();
    s.rows += tokens;
  }

  /** Stream `name`'s rows in chunks of at most `maxRows`: Uint16Array // float16 [n, width], exact size. */
  async *read(name: string, maxRows: number): AsyncGenerator<{ x: Uint16Array; rows: number }> {
    const s = this.streams.get(name);
    if (!s) return;
    const rowBytes = s.width * 2;
    for (let r0 = 0; r0 < s.rows; r0 += maxRows) {
      const n = Math.min(maxRows, s.rows - r0);
      const x = new Uint16Array(n * s.width);
      const buf = new Uint8Array(x.buffer);
      let got = 0;
      while (got < buf.length) {
        const { bytesRead } = await s.handle.read(buf, got, buf.length - got, r0 * rowBytes + got);
        invariant(bytesRead > 0, `Error in FeatureSpill.read: ${s.file} ended at byte ${r0 * rowBytes + got}`);
        got += bytesRead;
      }
      yield { x, rows: n };
    }
  }

  /** Closes and deletes what this spill wrote (its own folder only). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    for (const s of this.streams.values()) await s.handle.close().catch(() => undefined);
    await this.cast?.session.release().catch(() => undefined);
    await removeOwnTempDir(this.dir);
  }
}

// Tested by test/codec/encode-decode-cli.test.ts and test/model/cli.test.ts.
/**
 * Output paths are checked before any work starts, so a long run never ends in "cannot write":
 * the nearest existing ancestor must be a writable directory (missing parents are created at
 * write time), no path component may be a file, and the target itself must be of the right kind.
 */
import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants, openSync, statSync, unlinkSync, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { KvtcError } from '../errors.js';

function stat(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'ENOTDIR') throw unwritable(path, 'a component of the path is a file, not a directory', (e as Error).message);
    throw unwritable(path, `cannot be inspected (${code})`, (e as Error).message);
  }
}

function unwritable(path: string, why: string, detail?: string): KvtcError {
  return new KvtcError('OUTPUT_UNWRITABLE', `cannot write ${path}: ${why}`, {
    fix: 'Choose an --out in a directory you can write to (check the path, its permissions and that the filesystem is not read-only).',
    context: { out: path, ...(detail ? { detail } : {}) },
  });
}

/**
 * Creates and removes an empty file in `dir`: the only test that holds for root, read-only
 * mounts and network filesystems alike (access(2) says yes to root on a read-only sysfs).
 */
function probe(path: string, dir: string): void {
  const file = join(dir, `.kvtc-write-test-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    closeSync(openSync(file, 'wx'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'EROFS'
        ? 'is on a read-only filesystem'
        : code === 'EACCES' || code === 'EPERM'
          ? 'is not writable (permission denied)'
          : `cannot be written (${code})`;
    throw unwritable(path, `${dir === path ? 'it' : dir} ${why}`);
  }
  unlinkSync(file);
}

/** The nearest existing ancestor of `path` must be a writable directory. */
function checkParent(path: string): void {
  let dir = dirname(resolve(path));
  for (;;) {
    const st = stat(dir);
    if (st) {
      if (!st.isDirectory()) throw unwritable(path, `${dir} is a file, not a directory`);
      probe(path, dir);
      return;
    }
    const up = dirname(dir);
    if (up === dir) throw unwritable(path, 'no existing parent directory');
    dir = up;
  }
}

export interface OutputFileOptions {
  /** Overwrite an existing file. */
  force?: boolean;
  /** The option that named the path, for messages (default --out). */
  option?: string;
}

/** Checks that a file can be written at `path` (see module doc); an existing file needs `force`. */
export function checkOutputFile(path: string, opts: OutputFileOptions = {}): void {
  const option = opts.option ?? '--out';
  const st = stat(path);
  if (st?.isDirectory()) throw unwritable(path, 'it is a directory', `${option} names a directory; give a file path`);
  if (st && !opts.force) {
    throw new KvtcError('OUTPUT_EXISTS', `output ${path} already exists`, {
      fix: `Pass --force to overwrite it, or choose another ${option}.`,
      context: { out: path },
    });
  }
  checkParent(path);
  if (st) {
    try {
      accessSync(path, constants.W_OK);
    } catch {
      throw unwritable(path, 'the existing file is not writable');
    }
  }
}

/** Checks that a directory can be created or written into at `path`. */
export function checkOutputDir(path: string): void {
  const st = stat(path);
  if (st && !st.isDirectory()) throw unwritable(path, 'it is a file, not a directory');
  if (st) return probe(path, path);
  checkParent(path);
}

const FS_CODES = new Set([
  'EACCES',
  'EPERM',
  'EROFS',
  'ENOSPC',
  'EDQUOT',
  'ENOTDIR',
  'EISDIR',
  'EEXIST',
  'EMFILE',
  'ENFILE',
  'EIO',
  'ENAMETOOLONG',
  'ELOOP',
  'EBUSY',
  'EXDEV',
]);

/**
 * An operating-system file error (disk full, permissions, read-only filesystem...) is the user's
 * environment, not a kvtc bug: it becomes a typed IO_ERROR naming the path. Anything else is left.
 */
export function asIoError(e: unknown): KvtcError | undefined {
  const err = e as NodeJS.ErrnoException;
  if (!err || typeof err !== 'object' || typeof err.code !== 'string' || !FS_CODES.has(err.code)) return undefined;
  const path = (err as { path?: string }).path;
  const what: Record<string, string> = {
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    EROFS: 'read-only filesystem',
    ENOSPC: 'no space left on the device',
    EDQUOT: 'disk quota exceeded',
    ENOTDIR: 'a component of the path is not a directory',
    EISDIR: 'it is a directory',
  };
  return new KvtcError(
    'IO_ERROR',
    `${err.syscall ?? 'file operation'} ${path ?? ''} failed: ${what[err.code] ?? err.code}`.replace(/\s+/g, ' '),
    {
      fix: 'Check the path, its permissions and the free space, then run the command again (nothing was left half-written).',
      context: { path, errno: err.code },
      cause: e,
    },
  );
}

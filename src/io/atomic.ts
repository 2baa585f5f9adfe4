// Tested by test/profile/profile-io.test.ts and test/codec/encode-decode-cli.test.ts.
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';

/** Writes a file via temp file + rename, so readers never see a half-written file. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${randomBytes(4).toString('hex')}`);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * Writes a whole directory atomically: `fill` writes into a temp sibling directory, which
 * is renamed onto `dir` only if `fill` succeeds. On failure (or Ctrl-C, via the abort
 * signal) the temp directory is removed and `dir` is untouched.
 */
export async function writeDirAtomic(
  dir: string,
  fill: (tmpDir: string) => Promise<void>,
  opts: { replace?: boolean } = {},
): Promise<void> {
  await mkdir(dirname(dir), { recursive: true });
  const tmp = join(dirname(dir), `.${basename(dir)}.tmp-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp);
  const cleanup = () => rm(tmp, { recursive: true, force: true });
  try {
    await fill(tmp);
    if (opts.replace) await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
  } catch (e) {
    await cleanup();
    throw e;
  }
}

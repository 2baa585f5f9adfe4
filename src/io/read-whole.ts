// Tested by test/io/hash.test.ts.
/**
 * A whole file into memory, of any size a Uint8Array takes. fs.readFile refuses files over
 * 2 GiB (ERR_FS_FILE_TOO_LARGE), and profiles of large models pass that: one basis over all 32
 * layers of an 8B model at rank 8K is 32,768 × 8,192 float32 = 1 GiB per kind. Callers bound
 * the size first (they know what the manifest says the file holds).
 */
import { open } from 'node:fs/promises';

/** Bytes per read call. */
export const READ_CHUNK_BYTES = 64 * 1024 * 1024;

export async function readWholeFile(path: string, chunkBytes = READ_CHUNK_BYTES): Promise<Uint8Array> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const out = new Uint8Array(size);
    let at = 0;
    while (at < size) {
      const { bytesRead } = await fh.read(out, at, Math.min(chunkBytes, size - at), at);
      if (bytesRead === 0) throw new Error(`${path} was cut to ${at} bytes while it was read (it had ${size})`);
      at += bytesRead;
    }
    return out;
  } finally {
    await fh.close();
  }
}

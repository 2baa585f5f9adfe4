import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { sha256 } from '../../src/io/hash.js';
import { readWholeFile } from '../../src/io/read-whole.js';

describe('sha256', () => {
  it('gives the FIPS 180-2 test vectors, for strings (as UTF-8) and bytes alike', () => {
    expect(sha256('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256(new Uint8Array([0x61, 0x62, 0x63]))).toBe(sha256('abc'));
    expect(sha256('')).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

describe('sha256 and readWholeFile in chunks', () => {
  // Node refuses one Hash.update over 2 GiB and fs.readFile over 2 GiB; both go in chunks, which
  // must not change a byte of the result. Small chunk sizes exercise every boundary case here.
  const bytes = Uint8Array.from({ length: 1000 }, (_, i) => (i * 131 + 7) & 0xff);

  it('hashes the same in any chunk size, including ones that do not divide the length', () => {
    const whole = sha256(bytes);
    expect(whole).toBe(createHash('sha256').update(bytes).digest('hex'));
    for (const chunk of [1, 7, 64, 999, 1000, 4096]) expect(sha256(bytes, chunk)).toBe(whole);
    expect(sha256(new Uint8Array(0), 3)).toBe(sha256(''));
  });

  it('reads a file whole in any chunk size', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvtc-readwhole-'));
    try {
      const file = join(dir, 'f.bin');
      writeFileSync(file, bytes);
      for (const chunk of [1, 7, 999, 1000, 1 << 20])
        expect(Buffer.from(await readWholeFile(file, chunk)).equals(Buffer.from(bytes))).toBe(true);
      writeFileSync(join(dir, 'empty'), new Uint8Array(0));
      expect((await readWholeFile(join(dir, 'empty'))).byteLength).toBe(0);
      await expect(readWholeFile(join(dir, 'missing'))).rejects.toThrow(/ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

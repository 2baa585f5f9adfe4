import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { firstInvalidUtf8, readTextFile, readTextSources } from '../../src/io/text.js';

const dir = mkdtempSync(join(tmpdir(), 'kvtc-text-'));

describe('text input', () => {
  it('reads UTF-8 and drops a BOM', async () => {
    const p = join(dir, 'a.txt');
    writeFileSync(p, '\ufeffHéllo wörld ✓');
    expect((await readTextFile(p)).text).toBe('Héllo wörld ✓');
  });
  it('reports the offset of the first bad byte', async () => {
    const p = join(dir, 'latin1.txt');
    writeFileSync(p, Buffer.from([0x61, 0x62, 0xe9, 0x74, 0xe9])); // "abété" in Latin-1
    await expect(readTextFile(p)).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(/latin1\.txt: is not valid UTF-8 \(byte 0xe9 at offset 2\)/),
    });
  });
  it.each([
    [[0x61], -1],
    [[0xc3, 0xa9], -1],
    [[0xf0, 0x9f, 0x98, 0x80], -1],
    [[0x61, 0xc0, 0x80], 1], // overlong
    [[0xed, 0xa0, 0x80], 0], // surrogate
    [[0x61, 0x62, 0xe2, 0x82], 2], // truncated
    [[0x80], 0],
  ])('firstInvalidUtf8(%j) = %d', (bytes, at) => {
    expect(firstInvalidUtf8(Uint8Array.from(bytes))).toBe(at);
  });
  it('rejects an empty file', async () => {
    const p = join(dir, 'empty.txt');
    writeFileSync(p, '');
    await expect(readTextFile(p)).rejects.toMatchObject({ code: 'DATA_INVALID', message: expect.stringMatching(/empty\.txt: is empty/) });
  });
  it('reads a directory of .txt files in name order', async () => {
    const d = join(dir, 'corpus');
    mkdirSync(d);
    writeFileSync(join(d, 'b.txt'), 'second');
    writeFileSync(join(d, 'a.txt'), 'first');
    writeFileSync(join(d, 'notes.md'), 'ignored');
    expect((await readTextSources(d)).map((f) => f.text)).toEqual(['first', 'second']);
  });
  it('names a missing path', async () => {
    await expect(readTextSources(join(dir, 'nope'))).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(/nope: no such file/),
    });
  });
});

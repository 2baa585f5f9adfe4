/** Streaming text files, and what a file that is not UTF-8 is said to be. */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { describeNotUtf8, firstInvalidUtf8, readTextFile, TextFileReader } from '../../src/io/text.js';
import { tempDir } from './helpers.js';

const dir = tempDir('kvtc-text-stream-');

async function readAll(path: string, blockBytes: number) {
  const r = await TextFileReader.open(path, { blockBytes });
  const pieces: string[] = [];
  try {
    for (let p = await r.next(); p !== null; p = await r.next()) pieces.push(p);
  } finally {
    await r.close();
  }
  return { text: pieces.join(''), pieces, info: r.info() };
}

function file(name: string, data: string | Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, data);
  return p;
}

describe('TextFileReader', () => {
  const text = 'Héllo wörld ✓ 😀 日本語\n'.repeat(40);

  it.each([1, 2, 3, 5, 7, 64, 1 << 16])(
    "streams exactly readTextFile's text in blocks of %d bytes, with its hash and length",
    async (blockBytes) => {
      const p = file(`multi-${blockBytes}.txt`, text);
      const got = await readAll(p, blockBytes);
      const whole = await readTextFile(p);
      expect(got.text).toBe(whole.text);
      expect(got.info.chars).toBe(whole.text.length);
      expect(got.info.bytes).toBe(whole.bytes);
      expect(got.info.sha256).toBe(createHash('sha256').update(whole.text).digest('hex'));
      expect(got.pieces.every((x) => x.length > 0)).toBe(true);
    },
  );

  it('drops a leading BOM (and a second one, as readTextFile does)', async () => {
    expect((await readAll(file('bom.txt', '\ufeffabc'), 2)).text).toBe('abc');
    const two = file('bom2.txt', '\ufeff\ufeffabc');
    expect((await readAll(two, 2)).text).toBe((await readTextFile(two)).text);
    expect((await readAll(two, 2)).text).toBe('abc');
  });

  it("reports the first bad byte's offset, also when a sequence spans two blocks", async () => {
    const p = file('split.txt', Buffer.from([0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0xe2, 0x82, 0x41, 0x42]));
    for (const blockBytes of [1, 2, 3, 7, 8, 64]) {
      await expect(readAll(p, blockBytes), `block ${blockBytes}`).rejects.toMatchObject({ code: 'DATA_INVALID', context: { offset: 6 } });
    }
    const cut = file('truncated.txt', Buffer.from([0x61, 0x62, 0xe2, 0x82]));
    await expect(readAll(cut, 3)).rejects.toMatchObject({ code: 'DATA_INVALID', context: { offset: 2 } });
  });

  it('rejects an empty or whitespace-only file at its end', async () => {
    await expect(readAll(file('empty.txt', ''), 4)).rejects.toMatchObject({ message: expect.stringMatching(/empty\.txt: is empty/) });
    await expect(readAll(file('blank.txt', ' \n\t\n'.repeat(10)), 4)).rejects.toMatchObject({
      message: expect.stringMatching(/blank\.txt: contains only whitespace/),
    });
  });
});

describe('a file that is not UTF-8 is described by what it is', () => {
  const latin1 = Buffer.from('Le café est très chaud; la crème brûlée aussi.\n'.repeat(20), 'latin1');
  const cp1252 = Buffer.concat([
    Buffer.from('He said '),
    Buffer.from([0x93]),
    Buffer.from('hello'),
    Buffer.from([0x94]),
    Buffer.from(' '),
    Buffer.from([0x97]),
    Buffer.from(' and left.\n'),
  ]);
  const binary = gzipSync(Buffer.from('some text to compress '.repeat(500)));
  const controls = Buffer.from(Array.from({ length: 4000 }, (_, i) => 1 + ((i * 7919) % 255)));
  const utf16 = Buffer.from('\ufeffHello, world.\n', 'utf16le');
  const utf16NoBom = Buffer.from('Hello, world. A longer line of text.\n', 'utf16le');
  const damaged = Buffer.concat([
    Buffer.from('Ça va très bien, naïve café — “quotes” ✓\n'.repeat(10)),
    Buffer.from([0xff]),
    Buffer.from('more\n'),
  ]);

  it.each([
    ['latin1', latin1, 'latin1', /reads as Latin-1 text/, /iconv -f latin1 -t utf-8/],
    ['windows-1252', cp1252, 'windows-1252', /reads as Windows-1252 text/, /iconv -f windows-1252 -t utf-8/],
    ['gzip data', binary, 'binary', /is binary, not text \(a NUL byte at offset \d+\)/, /Remove it.*point --data at the text files/],
    ['control bytes, no NUL', controls, 'binary', /is binary, not text \(\d+% of its first 4000 bytes are control bytes\)/, /Remove it/],
    ['UTF-16 with a BOM', utf16, 'utf-16', /is UTF-16 text/, /iconv -f utf-16 -t utf-8/],
    ['UTF-16 without a BOM', utf16NoBom, 'utf-16', /is UTF-16 text \(little-endian/, /iconv -f utf-16le -t utf-8/],
    [
      'damaged UTF-8',
      damaged,
      'damaged-utf-8',
      /is not valid UTF-8 \(byte 0xff at offset \d+\); it is mostly UTF-8/,
      /iconv -f utf-8 -t utf-8 -c/,
    ],
  ])('%s', async (_name, bytes, kind, problem, fix) => {
    const p = file(`${kind}-${bytes.length}.txt`, bytes);
    const d = describeNotUtf8(p, bytes, firstInvalidUtf8(bytes));
    expect(d.kind).toBe(kind);
    expect(d.problem).toMatch(problem);
    expect(d.fix).toMatch(fix);
    if (kind !== 'binary') expect(d.fix).not.toMatch(/Remove it/);
    else expect(d.fix).not.toMatch(/iconv/);
    // Both readers say the same.
    await expect(readTextFile(p)).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(problem),
      fix: expect.stringMatching(fix),
      context: { kind },
    });
    await expect(readAll(p, 64)).rejects.toMatchObject({
      code: 'DATA_INVALID',
      message: expect.stringMatching(problem),
      context: { kind },
    });
  });

  it('quotes a path the shell would split in the iconv command', () => {
    expect(describeNotUtf8('my notes.txt', latin1, 0).fix).toContain(
      "iconv -f latin1 -t utf-8 'my notes.txt' > 'my notes.txt.utf8' && mv 'my notes.txt.utf8' 'my notes.txt'",
    );
  });
});

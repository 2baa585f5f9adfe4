// The manifest's strict UTF-8 and duplicate-key scans (src/profile/strict-json.ts), against
// independent references: TextDecoder's fatal mode for UTF-8, and for duplicate keys JSON texts
// built with a known answer (JSON.stringify never repeats a key; one is then repeated on purpose).
import { describe, expect, it } from 'vitest';
import { decodeUtf8Strict, findDuplicateKey, firstInvalidUtf8 } from '../../src/profile/strict-json.js';
import { rng } from '../codec/rng.js';

const fatal = new TextDecoder('utf-8', { fatal: true });
const valid = (b: Uint8Array) => {
  try {
    fatal.decode(b);
    return true;
  } catch {
    return false;
  }
};

describe('firstInvalidUtf8', () => {
  it.each([
    ['ASCII', [0x61, 0x62], -1],
    ['2-, 3- and 4-byte characters', [0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80], -1],
    ['a lone continuation byte', [0x61, 0x80], 1],
    ['0xff', [0xff], 0],
    ['an overlong 2-byte form (0xc0 0x80)', [0x61, 0xc0, 0x80], 1],
    ['an overlong 3-byte form (0xe0 0x80 0x80)', [0xe0, 0x80, 0x80], 0],
    ['a UTF-16 surrogate (0xed 0xa0 0x80)', [0xed, 0xa0, 0x80], 0],
    ['past U+10FFFF (0xf4 0x90 0x80 0x80)', [0xf4, 0x90, 0x80, 0x80], 0],
    ['a sequence cut short at the end', [0x61, 0xe2, 0x82], 1],
    ['a sequence cut short by ASCII', [0xe2, 0x41, 0x42], 0],
  ])('%s', (_n, bytes, want) => {
    expect(firstInvalidUtf8(Uint8Array.from(bytes))).toBe(want);
    expect(valid(Uint8Array.from(bytes))).toBe(want === -1);
  });

  it('agrees with TextDecoder fatal on 20,000 seeded byte strings rich in UTF-8 edge bytes', () => {
    const { uniform } = rng(0x75746638);
    const edge = [0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff];
    let invalid = 0;
    for (let k = 0; k < 20000; k++) {
      const b = Uint8Array.from({ length: 1 + Math.floor(uniform() * 8) }, () =>
        uniform() < 0.7 ? edge[Math.floor(uniform() * edge.length)] : Math.floor(uniform() * 256),
      );
      const at = firstInvalidUtf8(b);
      expect(at === -1, Buffer.from(b).toString('hex')).toBe(valid(b));
      if (at >= 0) {
        invalid++;
        // Everything before the reported offset is valid UTF-8 on its own.
        expect(valid(b.subarray(0, at)), Buffer.from(b).toString('hex')).toBe(true);
      }
    }
    expect(invalid).toBeGreaterThan(5000);
  });

  it('decodeUtf8Strict keeps a BOM (so JSON.parse refuses it, as Python does) and names the bad offset', () => {
    const bom = decodeUtf8Strict(Uint8Array.from([0xef, 0xbb, 0xbf, 0x7b, 0x7d]));
    expect(bom).toEqual({ text: '\ufeff{}' });
    expect(decodeUtf8Strict(Uint8Array.from([0x7b, 0x22, 0xff, 0x22, 0x7d]))).toEqual({ badOffset: 2 });
  });
});

describe('findDuplicateKey', () => {
  it.each([
    ['none', '{"a": 1, "b": {"a": 2}, "c": [{"a": 1}, {"a": 2}]}', undefined],
    ['top level', '{"a": 1, "b": 2, "a": 3}', { path: 'a', offset: 17 }],
    ['nested', '{"m": {"x": 1, "x": 1}}', { path: 'm.x', offset: 15 }],
    ['in an array element', '{"s": [{"n": 1}, {"n": 2, "b": 0, "b": 0}]}', { path: 's[1].b', offset: 34 }],
    ['in an array of arrays', '[[1, {"k": 0, "k": 1}]]', { path: '[0][1].k', offset: 14 }],
    ['an escaped spelling', '{"ab": 1, "\\u0061b": 2}', { path: 'ab', offset: 10 }],
    ['keys that differ only inside an escape', '{"a\\"b": 1, "a\\\\b": 2}', undefined],
    ['string values that look like keys', '{"a": "a", "b": ["a", "a"], "c": "{\\"a\\": 1, \\"a\\": 2}"}', undefined],
    ['a key that is not an identifier', '{"a b": 1, "a b": 2}', { path: '["a b"]', offset: 11 }],
    ['a multi-byte key before it (byte offset, not characters)', '{"é": 1, "é": 2}', { path: '["é"]', offset: 10 }],
  ])('%s', (_n, text, want) => {
    JSON.parse(text); // every case is JSON that JSON.parse accepts
    expect(findDuplicateKey(text)).toEqual(want);
    if (want) expect(Buffer.from(text).subarray(want.offset).toString().startsWith('"')).toBe(true);
  });

  it('finds no duplicate in 300 seeded JSON.stringify outputs, and finds each repeated key by its path', () => {
    const { uniform } = rng(0x64757073);
    const int = (n: number) => Math.floor(uniform() * n);
    const leaf = () => [int(100), 'x', '{"k": 1}', true, null, -1.5e-7][int(6)];
    const gen = (depth: number): unknown => {
      if (depth > 3 || uniform() < 0.3) return leaf();
      if (uniform() < 0.4) return Array.from({ length: int(4) }, () => gen(depth + 1));
      const o: Record<string, unknown> = {};
      for (let i = int(5); i > 0; i--) o[['a', 'b', 'c', 'd', 'é', 'a b'][int(6)]] = gen(depth + 1);
      return o;
    };
    let found = 0;
    for (let k = 0; k < 300; k++) {
      const v = { root: gen(0) };
      const text = JSON.stringify(v, null, int(2) ? 2 : undefined);
      expect(findDuplicateKey(text)).toBeUndefined();
      // Repeat the first member of the last object: `"key": value,` inserted before itself.
      const objs = [...text.matchAll(/\{\s*("(?:[^"\\]|\\.)*")\s*:/g)];
      const m = objs[objs.length - 1];
      const at = m.index! + m[0].indexOf(m[1]);
      const dup = `${text.slice(0, at)}${m[1]}: 0, ${text.slice(at)}`;
      JSON.parse(dup);
      const d = findDuplicateKey(dup);
      expect(d, dup).toBeDefined();
      expect(d!.path.endsWith(/^[A-Za-z_]\w*$/.test(JSON.parse(m[1])) ? JSON.parse(m[1]) : `[${m[1]}]`), `${d!.path} in ${dup}`).toBe(true);
      expect(d!.offset).toBe(Buffer.byteLength(dup.slice(0, at + m[1].length + 5)));
      found++;
    }
    expect(found).toBe(300);
  });
});

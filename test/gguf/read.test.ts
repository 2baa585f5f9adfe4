/**
 * GGUF reader: round trips through the test writer (every metadata value type, tensors of every
 * supported type whose float values gguf-py computed, v2 and v3, custom alignment), the typed
 * accessors, and one refusal per rule: each a KvtcError with its code, a message naming the
 * problem, a fix, and the CLI's exit code 1.
 */
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { exitCodeFor } from '../../src/cli/exit-codes.js';
import { isKvtcError, type KvtcError } from '../../src/errors.js';
import { DEQUANT_TYPES, openGguf, readTensor, readTensorBytes } from '../../src/gguf/read.js';
import { m, tensorBytes, writeGguf, type GgufSpec, type TensorSpec } from './write-gguf.js';

const dir = mkdtempSync(join(tmpdir(), 'kvtc-gguf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
function file(bytes: Uint8Array): string {
  const p = join(dir, `f${n++}.gguf`);
  writeFileSync(p, bytes);
  return p;
}
const build = (spec: GgufSpec) => file(writeGguf(spec).bytes);

const fixture = JSON.parse(readFileSync(new URL('../fixtures/gguf/quants.json', import.meta.url), 'utf8')) as {
  types: Record<string, { elements: number; bytes: string; floats: string }>;
};
const b64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));

async function refusal(p: Promise<unknown> | (() => unknown)): Promise<KvtcError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    if (!isKvtcError(e)) throw e;
    expect(e.fix).toBeTruthy();
    expect(exitCodeFor(e)).toBe(1);
    return e;
  }
  throw new Error('expected a refusal');
}

const f32 = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);

describe('openGguf + readTensor round trips', () => {
  it('reads metadata of every value type, with typed accessors', async () => {
    const vocab = Array.from({ length: 3000 }, (_, i) => `tok${i}·é🙂`);
    const f = await openGguf(
      build({
        metadata: [
          ['general.architecture', m.str('llama')],
          ['u8', m.u8(255)],
          ['i8', m.i8(-128)],
          ['u16', m.u16(65535)],
          ['i16', m.i16(-32768)],
          ['u32', m.u32(4294967295)],
          ['i32', m.i32(-5)],
          ['f32', m.f32(1e-5)],
          ['f64', m.f64(Math.PI)],
          ['u64', m.u64(2n ** 63n + 5n)],
          ['i64', m.i64(-7n)],
          ['small64', m.u64(42n)],
          ['yes', m.bool(true)],
          ['no', m.bool(false)],
          ['empty', m.str('')],
          ['tokenizer.ggml.tokens', m.arr('STRING', vocab)],
          ['scores', m.arr('FLOAT32', [0.5, -1000, 3])],
          ['heads', m.arr('INT32', [4, 4, 8])],
          ['big', m.arr('UINT64', [1n, 2n])],
          ['flags', m.arr('BOOL', [true, false])],
          ['none', m.arr('UINT8', [])],
        ],
      }),
    );
    expect(f.version).toBe(3);
    expect(f.alignment).toBe(32);
    expect(f.tensors).toEqual([]);
    expect(f.getString('general.architecture')).toBe('llama');
    expect([f.getNumber('u8'), f.getNumber('i8'), f.getNumber('u16'), f.getNumber('i16'), f.getNumber('u32'), f.getNumber('i32')]).toEqual([
      255, -128, 65535, -32768, 4294967295, -5,
    ]);
    expect(f.getNumber('f32')).toBe(Math.fround(1e-5));
    expect(f.getNumber('f64')).toBe(Math.PI);
    expect(f.get('u64')).toBe(2n ** 63n + 5n);
    expect(f.getInteger('i64')).toBe(-7);
    expect(f.getInteger('small64')).toBe(42);
    expect([f.getBool('yes'), f.getBool('no')]).toEqual([true, false]);
    expect(f.getString('empty')).toBe('');
    expect(f.getStringArray('tokenizer.ggml.tokens')).toEqual(vocab);
    expect(f.getNumberArray('scores')).toEqual([0.5, -1000, 3]);
    expect(f.getNumberArray('heads')).toEqual([4, 4, 8]);
    expect(f.getNumberArray('big')).toEqual([1, 2]);
    expect(f.get('flags')).toEqual([true, false]);
    expect(f.getArray('big')).toEqual({ itemType: 'UINT64', values: [1n, 2n] });
    expect(f.getArray('tokenizer.ggml.tokens').values).toHaveLength(3000);
    expect(f.getNumberArray('none')).toEqual([]);
    // fallbacks apply to missing keys only
    expect(f.getNumber('llama.rope.freq_base', 10000)).toBe(10000);
    expect(f.getString('missing', 'x')).toBe('x');
    expect(f.has('u8')).toBe(true);
    expect(f.get('missing')).toBeUndefined();
  });

  it('accessors name a missing or mistyped key', async () => {
    const f = await openGguf(
      build({
        metadata: [
          ['a', m.str('x')],
          ['n', m.f32(1.5)],
          ['huge', m.u64(2n ** 60n)],
          ['list', m.arr('INT32', [1])],
        ],
      }),
    );
    const cases: [() => unknown, RegExp][] = [
      [() => f.getString('llama.block_count'), /metadata key "llama.block_count" is missing \(a string expected\)/],
      [() => f.getNumber('a'), /metadata key "a" is STRING, expected a number/],
      [() => f.getNumber('a', 3), /"a" is STRING/],
      [() => f.getString('n'), /"n" is FLOAT32, expected a string/],
      [() => f.getInteger('n'), /"n" is 1.5, expected a whole number/],
      [() => f.getNumber('huge'), /beyond the integers kvtc can hold exactly/],
      [() => f.getStringArray('list'), /"list" is ARRAY of INT32, expected an array of strings/],
      [() => f.getNumberArray('a'), /expected an array of numbers/],
      [() => f.getBool('a'), /expected a bool/],
      [() => f.getArray('n'), /"n" is FLOAT32, expected an array/],
      [() => f.tensor('output.weight'), /tensor "output.weight" is not in the file/],
    ];
    for (const [fn, re] of cases) {
      const e = await refusal(fn);
      expect(e.code).toBe('GGUF_INVALID');
      expect(e.message).toMatch(re);
    }
  });

  it.each([2, 3])('v%i: tensors of every supported type dequantize to gguf-py values, in ggml order', async (version) => {
    const tensors: TensorSpec[] = Object.entries(fixture.types).map(([type, t]) => {
      const bs = type.endsWith('_K') ? 256 : type.startsWith('Q') ? 32 : 1;
      const ne = bs === 1 ? [t.elements / 4, 4] : [bs * 2, t.elements / (bs * 2)];
      return { name: `w.${type}`, ne, type, data: b64(t.bytes) };
    });
    tensors.push({ name: 'w.F64', ne: [3], type: 'F64', data: new Uint8Array(new Float64Array([1, -2.5, 1 / 3]).buffer) });
    const f = await openGguf(build({ version, tensors, metadata: [['general.architecture', m.str('llama')]] }));
    expect(f.version).toBe(version);
    expect(f.tensors.map((t) => t.name)).toEqual(tensors.map((t) => t.name));
    for (const [type, t] of Object.entries(fixture.types)) {
      const info = f.tensor(`w.${type}`);
      expect(info.type.name).toBe(type);
      expect(info.shape).toEqual([...info.ne].reverse());
      expect(info.byteSize).toBe(b64(t.bytes).length);
      expect(info.fileOffset % 32).toBe(0);
      const got = await readTensor(f, info.name);
      const want = new Float32Array(b64(t.floats).slice().buffer);
      expect(got.length).toBe(t.elements);
      for (let i = 0; i < got.length; i++)
        if (!(Number.isNaN(want[i]) && Number.isNaN(got[i]))) expect(got[i], `${type}[${i}]`).toBe(want[i]);
      expect(await readTensorBytes(f, info.name)).toEqual(b64(t.bytes));
    }
    expect(Array.from(await readTensor(f, 'w.F64'))).toEqual([1, -2.5, Math.fround(1 / 3)]);
  });

  it('honours general.alignment and scalar (0-d) tensors', async () => {
    const f = await openGguf(
      build({
        alignment: 256,
        tensors: [
          { name: 'a', ne: [3], type: 'F32', data: f32([1, 2, 3]) },
          { name: 'scalar', ne: [], type: 'F32', data: f32([7]) },
          { name: 'b', ne: [2, 2], type: 'F32', data: f32([1, 2, 3, 4]) },
        ],
      }),
    );
    expect(f.alignment).toBe(256);
    expect(f.dataStart % 256).toBe(0);
    expect(f.tensors.map((t) => t.offset)).toEqual([0, 256, 512]);
    expect(Array.from(await readTensor(f, 'scalar'))).toEqual([7]);
    expect(f.tensor('scalar').shape).toEqual([]);
    // row-major with ne[0] fastest: [[1, 2], [3, 4]] in PyTorch shape [ne1, ne0]
    expect(Array.from(await readTensor(f, 'b'))).toEqual([1, 2, 3, 4]);
  });
});

describe('refusals', () => {
  const base = (): GgufSpec => ({
    metadata: [['general.architecture', m.str('llama')]],
    tensors: [
      { name: 'a', ne: [32, 2], type: 'Q8_0', data: new Uint8Array(tensorBytes('Q8_0', [32, 2])) },
      { name: 'b', ne: [4], type: 'F32', data: f32([1, 2, 3, 4]) },
    ],
  });
  const put = (bytes: Uint8Array, at: number, v: bigint | number, size: 4 | 8 = 8) => {
    const dv = new DataView(bytes.buffer, bytes.byteOffset);
    if (size === 8) dv.setBigUint64(at, BigInt(v), true);
    else dv.setUint32(at, Number(v), true);
    return bytes;
  };
  const layoutOf = () => writeGguf(base());

  const cases: [string, () => Uint8Array, 'GGUF_INVALID' | 'GGUF_UNSUPPORTED', RegExp][] = [
    ['empty file', () => new Uint8Array(0), 'GGUF_INVALID', /only 0 bytes/],
    [
      'not GGUF',
      () => new TextEncoder().encode('PK\u0003\u0004 this is a zip file, not a gguf'),
      'GGUF_INVALID',
      /does not start with the GGUF magic/,
    ],
    ['v1', () => put(layoutOf().bytes, 4, 1, 4), 'GGUF_UNSUPPORTED', /GGUF version 1/],
    ['v4', () => put(layoutOf().bytes, 4, 4, 4), 'GGUF_UNSUPPORTED', /GGUF version 4; kvtc reads versions 2 and 3/],
    ['big-endian', () => put(layoutOf().bytes, 4, 0x03000000, 4), 'GGUF_UNSUPPORTED', /big-endian GGUF/],
    [
      'huge tensor count',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensorCount, 2n ** 62n);
      },
      'GGUF_INVALID',
      /tensor count is 4611686018427387904 .* more than the rest of the file can hold/,
    ],
    [
      'huge key count',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.keyCount, 2n ** 64n - 1n);
      },
      'GGUF_INVALID',
      /metadata key count is 18446744073709551615/,
    ],
    [
      'huge string length',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.keys[0].lengthAt, 2n ** 40n);
      },
      'GGUF_INVALID',
      /length of metadata key 0 is 1099511627776/,
    ],
    ['truncated header', () => layoutOf().bytes.subarray(0, 40), 'GGUF_INVALID', /truncated/],
    [
      'truncated data',
      () => {
        const b = layoutOf().bytes;
        return b.subarray(0, b.length - 64);
      },
      'GGUF_INVALID',
      /runs past the end of the file/,
    ],
    [
      'n_dims 5',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensors[0].nDimsAt, 5, 4);
      },
      'GGUF_INVALID',
      /tensor "a" has 5 dimensions; ggml allows at most 4/,
    ],
    [
      'huge dim',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensors[1].dimsAt[0], 2n ** 62n);
      },
      'GGUF_INVALID',
      /tensor "b" has dimension 0 of 4611686018427387904, impossible/,
    ],
    [
      'negative dim',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensors[1].dimsAt[0], 2n ** 64n - 1n);
      },
      'GGUF_INVALID',
      /dimension 0 of -1/,
    ],
    [
      'unknown ggml type',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensors[1].typeAt, 77, 4);
      },
      'GGUF_INVALID',
      /tensor "b" has ggml type id 77, which is not a ggml type \(known: 0 F32, 1 F16.*; kvtc dequantizes F32, F16, BF16/,
    ],
    [
      'row not whole blocks',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensors[0].dimsAt[0], 16);
      },
      'GGUF_INVALID',
      /rows of 16 elements, not a multiple of its block of 32/,
    ],
    [
      'misaligned offset',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensors[1].offsetAt, 100);
      },
      'GGUF_INVALID',
      /data offset 100, not a multiple of the alignment 32/,
    ],
    [
      'huge offset',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensors[1].offsetAt, 2n ** 63n);
      },
      'GGUF_INVALID',
      /runs past the end/,
    ],
    [
      'overlapping tensors',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.tensors[1].offsetAt, 32);
      },
      'GGUF_INVALID',
      /tensors "a" .* and "b" .* overlap/,
    ],
    [
      'unknown value type',
      () => {
        const { bytes, layout } = layoutOf();
        return put(bytes, layout.keys[0].typeAt, 13, 4);
      },
      'GGUF_INVALID',
      /has value type 13 .* not a GGUF type/,
    ],
    [
      'duplicate key',
      () =>
        writeGguf({
          metadata: [
            ['k', m.u8(1)],
            ['k', m.u8(2)],
          ],
        }).bytes,
      'GGUF_INVALID',
      /metadata key "k" appears twice/,
    ],
    [
      'duplicate tensor',
      () =>
        writeGguf({
          tensors: [
            { name: 't', ne: [1], type: 'F32', data: f32([1]) },
            { name: 't', ne: [1], type: 'F32', data: f32([2]) },
          ],
        }).bytes,
      'GGUF_INVALID',
      /tensor "t" appears twice/,
    ],
    ['alignment not a power of two', () => writeGguf({ alignment: 48 }).bytes, 'GGUF_INVALID', /general.alignment is UINT32 48/],
    [
      'alignment of another type',
      () => writeGguf({ metadata: [['general.alignment', m.u64(32n)]] }).bytes,
      'GGUF_INVALID',
      /general.alignment is UINT64 32/,
    ],
    [
      'BOOL of 2',
      () => {
        const w = writeGguf({ metadata: [['flag', m.bool(true)]] });
        w.bytes[w.layout.keys[0].typeAt + 4] = 2;
        return w.bytes;
      },
      'GGUF_INVALID',
      /BOOL of value 2/,
    ],
    [
      'invalid UTF-8',
      () => {
        const w = writeGguf({ metadata: [['s', m.str('abc')]] });
        w.bytes[w.layout.keys[0].typeAt + 4 + 8 + 1] = 0xff;
        return w.bytes;
      },
      'GGUF_INVALID',
      /is not valid UTF-8/,
    ],
    [
      'huge array count',
      () => {
        const w = writeGguf({ metadata: [['toks', m.arr('STRING', ['a', 'b'])]] });
        return put(w.bytes, w.layout.keys[0].arrayCountAt!, 2n ** 50n);
      },
      'GGUF_INVALID',
      /item count of metadata "toks" is 1125899906842624 at offset \d+, more than the bytes left in the file hold/,
    ],
    [
      'nested array',
      () => {
        const w = writeGguf({ metadata: [['x', m.arr('UINT8', [])]] });
        return put(w.bytes, w.layout.keys[0].itemTypeAt!, 9, 4);
      },
      'GGUF_UNSUPPORTED',
      /array of arrays/,
    ],
  ];

  it.each(cases)('%s', async (_name, make, code, re) => {
    const e = await refusal(openGguf(file(make())));
    expect(e.code, e.message).toBe(code);
    expect(e.message).toMatch(re);
    expect(e.message.startsWith(join(dir, 'f'))).toBe(true);
  });

  it('a type without a dequantizer is refused at readTensor, naming it and the supported ones', async () => {
    const f = await openGguf(build({ tensors: [{ name: 'iq', ne: [256], type: 'IQ2_XXS', data: new Uint8Array(66) }] }));
    expect(f.tensor('iq').type.name).toBe('IQ2_XXS');
    const e = await refusal(readTensor(f, 'iq'));
    expect(e.code).toBe('GGUF_UNSUPPORTED');
    expect(e.message).toContain('tensor "iq" is IQ2_XXS (ggml type 16), which kvtc cannot dequantize; supported: F32, F16, BF16');
    expect(e.message).toContain(DEQUANT_TYPES.join(', '));
    expect(await readTensorBytes(f, 'iq')).toHaveLength(66);
  });

  it('a missing file is MODEL_NOT_FOUND; a file changed after opening is refused', async () => {
    const e = await refusal(openGguf(join(dir, 'nope.gguf')));
    expect(e.code).toBe('MODEL_NOT_FOUND');
    const p = file(writeGguf(base()).bytes);
    const f = await openGguf(p);
    truncateSync(p, 100);
    const c = await refusal(readTensor(f, 'b'));
    expect(c.message).toMatch(/changed size since it was opened/);
  });
});

import { describe, expect, it } from 'vitest';
import { f32, parseSafetensors, scanSafetensors, serializeSafetensors, toTypedArray, type TensorEntry } from '../../src/io/safetensors.js';

function header(bytes: Uint8Array): { n: number; json: string } {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return { n, json: new TextDecoder().decode(bytes.subarray(8, 8 + n)) };
}

/** Builds a file by hand: header JSON as given (lenient-reader cases). */
function handMade(json: string, data: Uint8Array): Uint8Array {
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hb.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  out.set(data, 8 + hb.length);
  return out;
}

describe('safetensors writer (strict)', () => {
  it('writes sorted names, contiguous data, a space-padded 8-aligned header and format: pt', () => {
    const bytes = serializeSafetensors(
      { 'b.weight': f32(Float32Array.of(1, 2, 3), [3]), 'a.bias': f32(Float32Array.of(4), [1]) },
      { model: 'x' },
    );
    const { n, json } = header(bytes);
    expect(n % 8).toBe(0);
    expect(json).toMatch(/ *$/);
    const h = JSON.parse(json);
    expect(h.__metadata__).toEqual({ format: 'pt', model: 'x' });
    expect(h['a.bias'].data_offsets).toEqual([0, 4]);
    expect(h['b.weight'].data_offsets).toEqual([4, 16]);
    expect(Object.keys(h).filter((k) => k !== '__metadata__')).toEqual(['a.bias', 'b.weight']);
    expect(bytes.length).toBe(8 + n + 16);
  });

  it('round-trips every dtype and value bit-exactly', () => {
    const t: Record<string, TensorEntry> = {
      f32: f32(Float32Array.of(-0, 1.5, 3.4e38, 1e-45), [2, 2]),
      f16: { dtype: 'F16', shape: [2], data: new Uint8Array(Uint16Array.of(0x3c00, 0xfbff).buffer) },
      i64: { dtype: 'I64', shape: [1], data: new Uint8Array(BigInt64Array.of(-5n).buffer) },
      empty: { dtype: 'F32', shape: [0, 3], data: new Uint8Array(0) },
    };
    const back = parseSafetensors(serializeSafetensors(t));
    expect([...back.tensors.keys()].sort()).toEqual(Object.keys(t).sort());
    for (const [k, v] of Object.entries(t)) {
      const b = back.tensors.get(k)!;
      expect(b.dtype).toBe(v.dtype);
      expect(b.shape).toEqual(v.shape);
      expect(Buffer.from(b.data).equals(Buffer.from(v.data))).toBe(true);
    }
    expect(Array.from(toTypedArray(back.tensors.get('i64')!) as BigInt64Array)).toEqual([-5n]);
  });

  it('refuses a tensor whose bytes do not match its shape', () => {
    expect(() => serializeSafetensors({ x: { dtype: 'F32', shape: [3], data: new Uint8Array(8) } })).toThrow(/do not match shape/);
  });
});

describe('safetensors reader (lenient, but checks every offset)', () => {
  it('accepts unsorted entries, no padding, no metadata, and non-string metadata values', () => {
    const data = new Uint8Array(Float32Array.of(7, 8).buffer);
    const file = handMade(
      '{"z":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"n":3}}',
      data,
    );
    const r = parseSafetensors(file);
    expect(Array.from(toTypedArray(r.tensors.get('z')!) as Float32Array)).toEqual([8]);
    expect(r.metadata).toEqual({ n: '3' });
  });

  it.each([
    ['shorter than the length field', new Uint8Array(5), /shorter than the 8-byte header length/],
    ['header length past the end', handMade('{}', new Uint8Array(0)).map((b, i) => (i === 0 ? 200 : b)), /does not fit/],
    ['header not JSON', handMade('{nope', new Uint8Array(0)), /not valid UTF-8 JSON/],
    ['unknown dtype', handMade('{"x":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}', new Uint8Array(1)), /unknown dtype/],
    [
      'offsets past the data (truncated)',
      handMade('{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', new Uint8Array(8)),
      /outside the 8-byte data buffer/,
    ],
    ['size not matching shape', handMade('{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', new Uint8Array(8)), /needs 12/],
  ])('%s: SAFETENSORS_INVALID naming the problem', (_name, bytes, message) => {
    expect(() => parseSafetensors(bytes as Uint8Array, 'f.safetensors')).toThrow(message);
    try {
      parseSafetensors(bytes as Uint8Array, 'f.safetensors');
    } catch (e) {
      expect((e as { code: string }).code).toBe('SAFETENSORS_INVALID');
      expect((e as Error).message).toContain('f.safetensors');
    }
  });
});

/** handMade with the header padded with spaces to a multiple of 8, as kvtc's writer pads it. */
const padded = (json: string, data: Uint8Array) => handMade(json + ' '.repeat((8 - (new TextEncoder().encode(json).length % 8)) % 8), data);
const STRICT = { maxHeaderBytes: 4096, dtypes: ['F32'] as const };
const two = new Uint8Array(Float32Array.of(7, 8).buffer);

describe('safetensors reader, strict mode (files kvtc specifies: profiles)', () => {
  it('accepts what the writer writes, and gives the same tensors as lenient mode', () => {
    const file = serializeSafetensors({ a: f32(Float32Array.of(1, 2), [2]), b: f32(Float32Array.of(3), [1]) });
    const strict = parseSafetensors(file, 'f', STRICT);
    expect(strict).toEqual(parseSafetensors(file, 'f'));
    expect(Array.from(toTypedArray(strict.tensors.get('b')!) as Float32Array)).toEqual([3]);
  });

  it.each([
    [
      'a header length not a multiple of 8',
      handMade('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', two),
      /header length 54 is not a multiple of 8/,
    ],
    [
      'a header longer than the caller allows',
      padded(`{"__metadata__":{"x":"${'y'.repeat(5000)}"}}`, new Uint8Array(0)),
      /header length \d+ does not fit \(file \d+ bytes, header at most 4096\)/,
    ],
    [
      'an entry with an extra field',
      padded('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}', two),
      /tensor a: entry must be exactly \{dtype, shape, data_offsets\}/,
    ],
    [
      'metadata that is not all strings',
      padded('{"__metadata__":{"n":3},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', two),
      /__metadata__ is not an object of strings/,
    ],
    [
      'a dtype outside the allowed ones',
      padded('{"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}', two),
      /tensor a has dtype "I32", expected F32/,
    ],
    [
      'a gap between tensors',
      padded('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', two),
      /tensor a starts at data offset 4, but the previous tensor ends at 0 \(the data must be contiguous\)/,
    ],
    ['trailing bytes', padded('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', two), /4 bytes after the last tensor's data/],
    [
      'a shape whose element count overflows',
      padded('{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}', two),
      /has 8 bytes, but F32\[4294967296,4294967296\] needs 9007199254740991/,
    ],
  ])('refuses %s (lenient mode reads what it can)', (_name, bytes, message) => {
    expect(() => parseSafetensors(bytes, 'f.safetensors', STRICT)).toThrow(message);
    if (!/overflows/.test(_name)) expect(() => parseSafetensors(bytes, 'f.safetensors')).not.toThrow();
  });

  it('collecting: every entry problem is reported, and the sound entries are returned', () => {
    const file = padded(
      '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[3],"data_offsets":[4,8]},"c":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}',
      two,
    );
    const problems: string[] = [];
    const r = scanSafetensors(file, (m) => problems.push(m), STRICT)!;
    expect(r.sound).toBe(false);
    expect(problems).toEqual(['tensor b has 4 bytes, but F32[3] needs 12', 'tensor c has dtype "U8", expected F32']);
    // c is kept (its dtype is a real one, so its size is known) and a then c fill the data exactly.
    expect([...r.tensors.keys()]).toEqual(['a', 'c']);
  });
});

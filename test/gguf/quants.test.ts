/**
 * Dequantizers against an independent reference: test/fixtures/gguf/quants.json holds random ggml
 * blocks of every supported type with the float32 values llama.cpp's gguf-py (gguf.quants.dequantize)
 * computes for them (scripts/gguf-quant-fixtures.py). kvtc must agree bit for bit (NaN = NaN): the
 * formulas are float32 products and sums of fp16 scales and small integers, with nothing to round
 * differently. Also: the byte-size/element contract, and F64 (which gguf-py cannot dequantize).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { canDequantize, dequantize, DEQUANT_TYPES } from '../../src/gguf/quants.js';
import { ggmlTypeByName, GGML_TYPES } from '../../src/gguf/types.js';

const fixture = JSON.parse(readFileSync(new URL('../fixtures/gguf/quants.json', import.meta.url), 'utf8')) as {
  generator: string;
  types: Record<string, { elements: number; bytes: string; floats: string }>;
};
const b64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));

describe('dequantize matches gguf-py bit for bit', () => {
  it('covers every type kvtc dequantizes except F64', () => {
    expect(Object.keys(fixture.types).sort()).toEqual(DEQUANT_TYPES.filter((t) => t !== 'F64').sort());
  });

  it.each(Object.keys(fixture.types))('%s', (name) => {
    const { elements, bytes, floats } = fixture.types[name];
    const type = ggmlTypeByName(name);
    const src = b64(bytes);
    const want = new Float32Array(b64(floats).slice().buffer);
    const got = dequantize(type, src, elements);
    expect(got.length).toBe(elements);
    const gotBits = new Uint32Array(got.buffer);
    const wantBits = new Uint32Array(want.buffer);
    let mismatches = 0;
    let first = -1;
    for (let i = 0; i < elements; i++) {
      const same = gotBits[i] === wantBits[i] || (Number.isNaN(got[i]) && Number.isNaN(want[i]));
      if (!same) {
        mismatches++;
        if (first < 0) first = i;
      }
    }
    expect(mismatches, mismatches ? `${name}: first mismatch at ${first}: ${got[first]} vs gguf-py ${want[first]}` : '').toBe(0);
    // The fixture holds ordinary values, not only degenerate ones.
    expect(want.filter((v) => Number.isFinite(v) && v !== 0).length).toBeGreaterThan(elements / 2);
  });

  it('F64 rounds to float32 like numpy astype', () => {
    const vals = [0, -0, 1.5, 1 / 3, -1e300, 1e-300, Math.PI, NaN, Infinity];
    const src = new Uint8Array(new Float64Array(vals).buffer);
    const got = dequantize(ggmlTypeByName('F64'), src, vals.length);
    expect(Array.from(got)).toEqual(vals.map((v) => Math.fround(v)));
  });

  it('refuses a byte count that does not match the element count (a caller bug)', () => {
    const q = ggmlTypeByName('Q4_K');
    expect(() => dequantize(q, new Uint8Array(143), 256)).toThrow(/Q4_K of 256 elements needs 144 bytes/);
    expect(() => dequantize(q, new Uint8Array(144), 100)).toThrow(/needs/);
  });

  it('names what it can and cannot dequantize', () => {
    expect(canDequantize(ggmlTypeByName('Q6_K'))).toBe(true);
    expect(canDequantize(ggmlTypeByName('IQ2_XXS'))).toBe(false);
    for (const t of DEQUANT_TYPES) expect(GGML_TYPES.some((g) => g.name === t)).toBe(true);
  });
});

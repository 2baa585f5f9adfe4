import { describe, expect, it } from 'vitest';
import { sha256 } from '../../src/io/hash.js';

describe('sha256', () => {
  it('gives the FIPS 180-2 test vectors, for strings (as UTF-8) and bytes alike', () => {
    expect(sha256('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256(new Uint8Array([0x61, 0x62, 0x63]))).toBe(sha256('abc'));
    expect(sha256('')).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

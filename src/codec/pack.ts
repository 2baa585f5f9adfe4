// Tested by test/codec/payload.test.ts.
/**
 * Bit-packing of quantization codes. codes: Uint8Array of values < 2^bits, one per byte.
 * Packed little-endian within a byte: code k of a byte occupies bits [k*bits, (k+1)*bits).
 * bits ∈ {2, 4, 8}. The packed length is ceil(n * bits / 8).
 */
import { InternalError } from '../errors.js';

export function packedLength(n: number, bits: number): number {
  return Math.ceil((n * bits) / 8);
}

export function packCodes(
  codes: Uint8Array,
  bits: number,
  out: Uint8Array = new Uint8Array(packedLength(codes.length, bits)),
  outOffset = 0,
): number {
  const n = codes.length;
  if (bits === 8) {
    out.set(codes, outOffset);
    return n;
  }
  if (bits === 4) {
    const full = n >> 1;
    for (let i = 0, j = outOffset; i < full; i++, j++) out[j] = codes[2 * i] | (codes[2 * i + 1] << 4);
    if (n & 1) out[outOffset + full] = codes[n - 1];
    return packedLength(n, 4);
  }
  if (bits === 2) {
    const full = n >> 2;
    let j = outOffset;
    for (let i = 0; i < full; i++, j++) {
      const k = 4 * i;
      out[j] = codes[k] | (codes[k + 1] << 2) | (codes[k + 2] << 4) | (codes[k + 3] << 6);
    }
    const rem = n & 3;
    if (rem) {
      let v = 0;
      for (let r = 0; r < rem; r++) v |= codes[4 * full + r] << (2 * r);
      out[j] = v;
    }
    return packedLength(n, 2);
  }
  throw new InternalError(`packCodes: unsupported bit width ${bits}`);
}

/** UNPACK2[b]: the four 2-bit codes of byte b as four bytes of a little-endian uint32; UNPACK4: two nibbles as a uint16. */
const UNPACK2 = Uint32Array.from(
  { length: 256 },
  (_, b) => ((b & 3) | (((b >> 2) & 3) << 8) | (((b >> 4) & 3) << 16) | ((b >> 6) << 24)) >>> 0,
);
const UNPACK4 = Uint16Array.from({ length: 256 }, (_, b) => (b & 15) | ((b >> 4) << 8));
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function unpackCodes(packed: Uint8Array, offset: number, n: number, bits: number, out: Uint8Array = new Uint8Array(n)): Uint8Array {
  // Whole bytes through a table, one aligned word write per packed byte (4x fewer stores).
  if (LITTLE_ENDIAN && bits === 2 && out.byteOffset % 4 === 0) {
    const full = n >> 2;
    const o32 = new Uint32Array(out.buffer, out.byteOffset, full);
    for (let i = 0, j = offset; i < full; i++, j++) o32[i] = UNPACK2[packed[j]];
    const rem = n & 3;
    if (rem) {
      const b = packed[offset + full];
      for (let r = 0; r < rem; r++) out[4 * full + r] = (b >> (2 * r)) & 3;
    }
    return out;
  }
  if (LITTLE_ENDIAN && bits === 4 && out.byteOffset % 2 === 0) {
    const full = n >> 1;
    const o16 = new Uint16Array(out.buffer, out.byteOffset, full);
    for (let i = 0, j = offset; i < full; i++, j++) o16[i] = UNPACK4[packed[j]];
    if (n & 1) out[n - 1] = packed[offset + full] & 15;
    return out;
  }
  if (bits === 8) {
    out.set(packed.subarray(offset, offset + n));
    return out;
  }
  if (bits === 4) {
    const full = n >> 1;
    for (let i = 0, j = offset; i < full; i++, j++) {
      const b = packed[j];
      out[2 * i] = b & 15;
      out[2 * i + 1] = b >> 4;
    }
    if (n & 1) out[n - 1] = packed[offset + full] & 15;
    return out;
  }
  if (bits === 2) {
    const full = n >> 2;
    let j = offset;
    for (let i = 0; i < full; i++, j++) {
      const b = packed[j];
      const k = 4 * i;
      out[k] = b & 3;
      out[k + 1] = (b >> 2) & 3;
      out[k + 2] = (b >> 4) & 3;
      out[k + 3] = b >> 6;
    }
    const rem = n & 3;
    if (rem) {
      const b = packed[j];
      for (let r = 0; r < rem; r++) out[4 * full + r] = (b >> (2 * r)) & 3;
    }
    return out;
  }
  throw new InternalError(`unpackCodes: unsupported bit width ${bits}`);
}

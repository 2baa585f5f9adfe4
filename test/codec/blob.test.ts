import { describe, expect, it } from 'vitest';
import {
  assembleBlob,
  blobBytes,
  compressSection,
  ENTROPY_CODERS,
  fp16BytesPerToken,
  HEADER_BYTES,
  parseBlob,
  rawSectionBytes,
  readBlobHeader,
  SECTION_BYTES,
  type BlobHeader,
} from '../../src/codec/blob.js';

const header: BlobHeader = {
  fp16: false,
  profileId: '0123456789abcdef',
  tokens: 10,
  startPosition: 7,
  layers: 2,
  kvHeads: 1,
  headDim: 4,
  sink: 2,
  window: 3,
};

describe('blob sizes', () => {
  it('blobBytes = header + one table entry per section + payloads + CRC, and assembleBlob writes exactly that', () => {
    expect(blobBytes([])).toBe(HEADER_BYTES + 4);
    expect(blobBytes([5, 0, 7])).toBe(HEADER_BYTES + 3 * SECTION_BYTES + 12 + 4);
    const raw = compressSection('raw', 0, new Uint8Array(rawSectionBytes({ ...header, rawFloat32: false })), 'stored');
    const plan = compressSection('plan', 0, new Uint8Array(64).fill(3), 'deflate-rle');
    const blob = assembleBlob(header, [raw, plan]);
    expect(blob.byteLength).toBe(blobBytes([raw.stored.byteLength, plan.stored.byteLength]));
  });

  it('fp16 bytes per token: keys and values of every layer and KV head, 2 bytes each', () => {
    expect(fp16BytesPerToken({ layers: 5, kvHeads: 4, headDim: 8 })).toBe(5 * 2 * 4 * 8 * 2);
  });

  it('the raw section holds (sink + window) tokens of every layer, keys and values, in fp16 or float32', () => {
    expect(rawSectionBytes({ ...header, rawFloat32: false })).toBe(2 * 2 * 1 * 5 * 4 * 2);
    expect(rawSectionBytes({ ...header, rawFloat32: true })).toBe(2 * 2 * 1 * 5 * 4 * 4);
  });
});

describe('sections and the header', () => {
  it('every entropy coder round-trips a payload, and never stores more than the payload', () => {
    const data = Uint8Array.from({ length: 500 }, (_, i) => (i * 7) % 5);
    for (const coder of ENTROPY_CODERS) {
      const s = compressSection('plan', 1, data, coder);
      expect(s.stored.byteLength).toBeLessThanOrEqual(data.byteLength);
      expect(s.codec === 0).toBe(coder === 'stored');
      const blob = assembleBlob(header, [
        compressSection('raw', 0, new Uint8Array(rawSectionBytes({ ...header, rawFloat32: false })), 'stored'),
        s,
      ]);
      const parsed = parseBlob(blob, {
        profileId: header.profileId,
        layers: 2,
        kvHeads: 1,
        headDim: 4,
        sink: 2,
        window: 3,
        planBytes: [null, () => data.byteLength],
      });
      expect(parsed.plans.get(1)).toEqual(data);
    }
  });

  it('readBlobHeader reads back what assembleBlob wrote', () => {
    const blob = assembleBlob({ ...header, fp16: true }, [
      compressSection('raw', 0, new Uint8Array(rawSectionBytes({ ...header, rawFloat32: false })), 'stored'),
    ]);
    expect(readBlobHeader(blob)).toMatchObject({ ...header, fp16: true, rawFloat32: false, sectionCount: 1 });
  });
});

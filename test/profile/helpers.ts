/** Test helpers for profile surgery: copies of the committed profile, tensor-file edits, re-signing. */
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { KvCache } from '../../src/model/types.js';
import { computeProfileId } from '../../src/profile/id.js';
import { rng } from '../codec/rng.js';

/**
 * The profile the surgery tests cut into: the per-layer format-1 profile committed before format 2
 * (test/fixtures/profile-v1/ORIGIN.md; its plan indices, ranks and bits are what the expected
 * messages name). The committed kvtc-profiles/stories260k now has one basis over all layers.
 */
export const PROFILE = fileURLToPath(new URL('../fixtures/profile-v1', import.meta.url));
export const MANIFEST = 'kvtc-profile.json';
export const TENSORS = 'kvtc-profile.safetensors';

export type Json = any;

export const tempDir = (prefix = 'kvtc-prof-') => mkdtempSync(join(tmpdir(), prefix));

export function committed(): { manifest: Json; tensors: Buffer } {
  return { manifest: JSON.parse(readFileSync(join(PROFILE, MANIFEST), 'utf8')), tensors: readFileSync(join(PROFILE, TENSORS)) };
}

/** Writes a profile directory from a manifest (object or raw text) and tensor bytes. */
export function writeFiles(dir: string, manifest: Json | string | Buffer, tensors: Uint8Array): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, MANIFEST),
    typeof manifest === 'string' || Buffer.isBuffer(manifest) ? manifest : JSON.stringify(manifest, null, 2),
  );
  writeFileSync(join(dir, TENSORS), tensors);
  return dir;
}

/** A writable copy of the bundled profile, with `edit` applied to its manifest (the profile id is not re-derived). */
export function copyWith(edit?: (m: Json) => void): string {
  const d = join(tempDir(), 'p');
  cpSync(PROFILE, d, { recursive: true });
  if (edit) {
    const f = join(d, MANIFEST);
    const m = JSON.parse(readFileSync(f, 'utf8'));
    edit(m);
    writeFileSync(f, JSON.stringify(m));
  }
  return d;
}

/**
 * Sets tensors.sha256, tensors.bytes and profile_id for `tensors` and the manifest as it is, so
 * only the content checks can catch an edit (what a careful attacker or a buggy tool would do).
 */
export function resign(manifest: Json, tensors: Uint8Array): Json {
  const m = structuredClone(manifest);
  m.tensors = { ...m.tensors, sha256: createHash('sha256').update(tensors).digest('hex'), bytes: tensors.byteLength };
  m.profile_id = computeProfileId(m);
  return m;
}

/** Re-signs the profile in `dir` after its files were edited. */
export function resignDir(dir: string): void {
  const m = JSON.parse(readFileSync(join(dir, MANIFEST), 'utf8'));
  writeFileSync(join(dir, MANIFEST), JSON.stringify(resign(m, readFileSync(join(dir, TENSORS)))));
}

export interface TensorFile {
  header: Record<string, Json>;
  /** Byte offset of the data buffer in the file. */
  dataStart: number;
  data: Buffer;
}

export function parseTensorFile(buf: Buffer): TensorFile {
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')), dataStart: 8 + n, data: buf.subarray(8 + n) };
}

/** Serializes a header (padded with spaces to a multiple of 8) and data, as kvtc's writer does. */
export function buildTensorFile(header: Record<string, Json>, data: Uint8Array): Buffer {
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const hb = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hb.length));
  return Buffer.concat([len, hb, data]);
}

/** Absolute file offset of element `i` of tensor `name`. */
export function elementOffset(buf: Buffer, name: string, i = 0): number {
  const t = parseTensorFile(buf);
  return t.dataStart + t.header[name].data_offsets[0] + 4 * i;
}

/** A copy of the tensor bytes with `edit` applied to the F32 values of tensor `name`. */
export function editTensor(buf: Buffer, name: string, edit: (v: Float32Array, shape: number[]) => void): Buffer {
  const out = Buffer.from(buf);
  const t = parseTensorFile(out);
  const [b, e] = t.header[name].data_offsets;
  const v = new Float32Array(out.buffer.slice(out.byteOffset + t.dataStart + b, out.byteOffset + t.dataStart + e));
  edit(v, t.header[name].shape);
  Buffer.from(v.buffer).copy(out, t.dataStart + b);
  return out;
}

/** In `dir`, edits tensor `name` and re-signs the manifest. */
export function editTensorDir(dir: string, name: string, edit: (v: Float32Array, shape: number[]) => void): void {
  const f = join(dir, TENSORS);
  writeFileSync(f, editTensor(readFileSync(f), name, edit));
  resignDir(dir);
}

/** A deterministic synthetic cache shaped for the bundled model (5 layers × 4 KV heads × 8). */
export function syntheticCache(tokens = 156, startPosition = 7, seed = 1): KvCache {
  const { normal } = rng(seed);
  const size = 4 * tokens * 8;
  const mk = (scale: number) => Array.from({ length: 5 }, () => Float32Array.from({ length: size }, () => normal() * scale));
  return { layers: 5, kvHeads: 4, headDim: 8, tokens, dtype: 'float32', startPosition, keys: mk(4), values: mk(0.5) };
}

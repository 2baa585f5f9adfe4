/**
 * Model fingerprint: identifies the model a profile or a KV capture was made from by what
 * determines its KV cache — the architecture fields kvtc reads (canonical JSON, so re-indenting
 * config.json or a save_pretrained round trip changes nothing), the ONNX graph file, and the
 * weights beside it (their size and a sampled hash: 32 evenly spaced 64 KiB windows plus the
 * first and last, because hashing tens of gigabytes on every load would cost more than it buys).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { ropeFields, type RopeFields } from '../rope/describe.js';
import type { ModelSpec } from './types.js';

/** The fields of a ModelSpec that decide the KV cache kvtc captures and un-rotates. */
export interface ArchitectureFields {
  architecture: string;
  family: string;
  layers: number;
  heads: number;
  kv_heads: number;
  head_dim: number;
  hidden: number;
  vocab_size: number;
  kv_dtype: string;
  /**
   * Every layer with the same RoPE of a kind fingerprints of kvtc ≤ 0.x described: that one
   * description (so existing fingerprints are unchanged); otherwise { per_layer } (src/rope/describe.ts).
   */
  rope: RopeFields;
}

export interface ModelFingerprint {
  /** First 16 hex digits of the combined digest: short enough to print, long enough not to collide. */
  id: string;
  /** sha256 of the lines below. */
  sha256: string;
  /** The architecture fields, and the sha256 of their canonical JSON. */
  architecture: ArchitectureFields;
  specSha256: string;
  onnx: { file: string; sha256: string; bytes: number };
  /** The external weights file beside the graph, if any: size and sampled sha256. */
  weights?: { file: string; bytes: number; sampleSha256: string };
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export function architectureFields(
  spec: Pick<
    ModelSpec,
    'architecture' | 'family' | 'layers' | 'heads' | 'kvHeads' | 'headDim' | 'hidden' | 'vocabSize' | 'kvDtype' | 'rope'
  >,
): ArchitectureFields {
  return {
    architecture: spec.architecture,
    family: spec.family,
    layers: spec.layers,
    heads: spec.heads,
    kv_heads: spec.kvHeads,
    head_dim: spec.headDim,
    hidden: spec.hidden,
    vocab_size: spec.vocabSize,
    kv_dtype: spec.kvDtype,
    rope: ropeFields(spec.rope),
  };
}

const WINDOW = 64 * 1024;
const WINDOWS = 32;

/** sha256 over the file size and 34 windows of it (first, last, 32 evenly spaced). */
export async function sampledSha256(path: string): Promise<{ bytes: number; sampleSha256: string }> {
  const bytes = (await stat(path)).size;
  const h = createHash('sha256').update(`bytes:${bytes}\n`);
  const f = await open(path, 'r');
  try {
    const buf = Buffer.alloc(WINDOW);
    const offsets = new Set<number>([0, Math.max(0, bytes - WINDOW)]);
    for (let i = 1; i <= WINDOWS; i++) offsets.add(Math.max(0, Math.floor((bytes * i) / (WINDOWS + 1)) - WINDOW / 2));
    for (const at of [...offsets].sort((a, b) => a - b)) {
      const { bytesRead } = await f.read(buf, 0, WINDOW, at);
      h.update(`@${at}\n`).update(buf.subarray(0, bytesRead));
    }
  } finally {
    await f.close();
  }
  return { bytes, sampleSha256: h.digest('hex') };
}

export async function fingerprintModel(input: {
  spec: Parameters<typeof architectureFields>[0];
  onnx: string;
  externalData?: string;
}): Promise<ModelFingerprint> {
  const architecture = architectureFields(input.spec);
  const specSha256 = createHash('sha256').update(JSON.stringify(architecture)).digest('hex');
  const onnx = { file: basename(input.onnx), sha256: await sha256File(input.onnx), bytes: (await stat(input.onnx)).size };
  const weights = input.externalData ? { file: basename(input.externalData), ...(await sampledSha256(input.externalData)) } : undefined;
  const h = createHash('sha256');
  h.update(`kvtc-model-fingerprint 2\nspec:${specSha256}\nonnx:${onnx.sha256}\n`);
  if (weights) h.update(`weights:${weights.bytes}:${weights.sampleSha256}\n`);
  const sha256 = h.digest('hex');
  return { id: sha256.slice(0, 16), sha256, architecture, specSha256, onnx, ...(weights ? { weights } : {}) };
}

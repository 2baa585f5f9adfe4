/**
 * Writes KV dumps (docs/kv-dumps.md) for the calibrate --kv tests: a manifest and one safetensors
 * file per sequence, from caches the tests capture with kvtc's own runner or make up. The writer
 * follows the document, not kvtc's reader: inverse frequencies are computed here from the RoPE
 * formula (default rule only), not by src/rope/freqs.ts.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { floatArrayToHalf } from '../../src/io/fp16.js';
import { bytesOf, serializeSafetensors, type TensorEntry } from '../../src/io/safetensors.js';
import type { KvCache, LayerRope } from '../../src/model/types.js';

export interface DumpModelInfo {
  name?: string;
  family?: string;
  architecture?: string;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  maxPositions: number;
  /** RoPE of each model layer (default rule only). */
  rope: LayerRope[];
}

export interface DumpSeq {
  /** keys/values of the file's layers (cache layers, or the shard's), [kvHeads, tokens, headDim]. */
  cache: KvCache;
  ids?: number[];
  /** Write a positions tensor (default true). */
  positions?: boolean;
}

export type DumpDtype = 'float32' | 'float16' | 'bfloat16';

export interface WriteDumpOptions {
  dtype?: DumpDtype;
  shard?: { tp_rank: number; tp_size: number; pp_rank: number; pp_size: number; layers: number[]; kv_heads: number[] };
  /** Model layers the files hold (default: all, or shard.layers). */
  fileLayers?: number[];
}

/** inv_freq of the default rule, 1 / theta^(2i/d), rounded to float32 as transformers keeps it. */
export function defaultInvFreq(theta: number, rotaryDim: number): number[] {
  return Array.from({ length: rotaryDim / 2 }, (_, i) => Math.fround(1 / theta ** ((2 * i) / rotaryDim)));
}

export function ropeEntry(r: LayerRope): Record<string, unknown> | null {
  if (!r) return null;
  if (r.scaling) throw new Error('test helper: default RoPE only');
  return { theta: r.theta, rotary_dim: r.rotaryDim, layout: r.layout, inv_freq: defaultInvFreq(r.theta, r.rotaryDim) };
}

function bf16(a: Float32Array): Uint16Array {
  const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const out = new Uint16Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16; // round to nearest even
  return out;
}

function entry(a: Float32Array, shape: number[], dtype: DumpDtype): TensorEntry {
  if (dtype === 'float16') return { dtype: 'F16', shape, data: bytesOf(floatArrayToHalf(a)) };
  if (dtype === 'bfloat16') return { dtype: 'BF16', shape, data: bytesOf(bf16(a)) };
  return { dtype: 'F32', shape, data: bytesOf(a) };
}

export function i64(values: number[]): TensorEntry {
  return { dtype: 'I64', shape: [values.length], data: bytesOf(BigInt64Array.from(values.map(BigInt))) };
}

export function seqFileName(i: number): string {
  return `seq-${String(i).padStart(6, '0')}.safetensors`;
}

/** The manifest object of a dump (tests edit it to make bad dumps). */
export function dumpManifest(model: DumpModelInfo, seqs: DumpSeq[], o: WriteDumpOptions = {}): Record<string, unknown> {
  return {
    format: 'kvtc-kv-dump',
    format_version: 1,
    producer: { name: 'kvtc-tests', version: '0' },
    model: {
      name: model.name ?? 'stories260k',
      family: model.family ?? 'llama',
      architecture: model.architecture ?? 'LlamaForCausalLM',
      layers: model.layers,
      heads: model.heads,
      kv_heads: o.shard ? o.shard.kv_heads.length : model.kvHeads,
      head_dim: model.headDim,
      dtype: o.dtype ?? 'float32',
      max_positions: model.maxPositions,
      cache: 'gqa',
      layer_kinds: Array.from({ length: model.layers }, () => 'full_attention'),
      cache_layers: Array.from({ length: model.layers }, (_, l) => l),
      rope: model.rope.map(ropeEntry),
    },
    ...(o.shard ? { shard: o.shard } : {}),
    sequences: seqs.map((s, i) => ({ file: seqFileName(i), tokens: s.cache.tokens, start_position: s.cache.startPosition })),
  };
}

/** The bytes of one sequence file. */
export function sequenceFile(s: DumpSeq, layers: number[], dtype: DumpDtype = 'float32'): Uint8Array {
  const c = s.cache;
  const tensors = new Map<string, TensorEntry>();
  layers.forEach((l, i) => {
    tensors.set(`present.${l}.key`, entry(c.keys[i], [1, c.kvHeads, c.tokens, c.headDim], dtype));
    tensors.set(`present.${l}.value`, entry(c.values[i], [1, c.kvHeads, c.tokens, c.valueDim ?? c.headDim], dtype));
  });
  if (s.positions !== false) tensors.set('positions', i64(Array.from({ length: c.tokens }, (_, t) => c.startPosition + t)));
  if (s.ids) tensors.set('input_ids', i64(s.ids));
  return serializeSafetensors(tensors, { tokens: String(c.tokens), start_position: String(c.startPosition) });
}

/** Writes a dump directory: kvtc-dump.json and seq-NNNNNN.safetensors. */
export function writeDump(dir: string, model: DumpModelInfo, seqs: DumpSeq[], o: WriteDumpOptions = {}): void {
  mkdirSync(dir, { recursive: true });
  const layers = o.fileLayers ?? o.shard?.layers ?? Array.from({ length: model.layers }, (_, l) => l);
  seqs.forEach((s, i) => writeFileSync(join(dir, seqFileName(i)), sequenceFile(s, layers, o.dtype)));
  writeFileSync(join(dir, 'kvtc-dump.json'), `${JSON.stringify(dumpManifest(model, seqs, o), null, 2)}\n`);
}

/** The caches of rank (layers, heads) of a whole-model cache: what a sharded engine would dump. */
export function cutCache(c: KvCache, layers: number[], heads: number[]): KvCache {
  const T = c.tokens;
  const D = c.headDim;
  const pick = (a: Float32Array) => {
    const out = new Float32Array(heads.length * T * D);
    heads.forEach((h, i) => out.set(a.subarray(h * T * D, (h + 1) * T * D), i * T * D));
    return out;
  };
  return {
    ...c,
    layers: layers.length,
    kvHeads: heads.length,
    keys: layers.map((l) => pick(c.keys[l])),
    values: layers.map((l) => pick(c.values[l])),
  };
}

/**
 * KV cache <-> safetensors, in the layout ONNX Runtime and transformers use:
 *   present.{i}.key, present.{i}.value: [1, kv_heads, tokens, head_dim], F16 or F32 (the model's dtype)
 *   __metadata__: format, producer, model, fingerprint, tokens, start_position, layers, kv_heads, head_dim, dtype
 * Reading validates names, shapes, dtypes and that every value is finite.
 */
import { fileError, KvtcError } from '../errors.js';
import { floatArrayToHalf, halfArrayToFloat } from '../io/fp16.js';
import {
  bytesOf,
  parseSafetensors,
  readSafetensors,
  serializeSafetensors,
  toTypedArray,
  type SafetensorsFile,
  type TensorEntry,
} from '../io/safetensors.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { KvCache, KvDtype } from './types.js';

export interface KvFileMeta {
  /** Model name (directory name). */
  model?: string;
  /** ModelFingerprint.id of the model the cache came from. */
  fingerprint?: string;
  /** Anything else worth recording (string values). */
  extra?: Record<string, string>;
}

/** Metadata `keys` value of a cache written by `kvtc capture --pre-rope` (RoPE undone on keys). */
export const PRE_ROPE = 'pre-rope';

export const kvTensorName = (layer: number, kind: 'key' | 'value') => `present.${layer}.${kind}`;

/** Serializes a cache; values are stored in `cache.dtype` (F16 rounds to nearest even). */
export function serializeKvCache(cache: KvCache, meta: KvFileMeta = {}): Uint8Array {
  const shape = [1, cache.kvHeads, cache.tokens, cache.headDim];
  const tensors = new Map<string, TensorEntry>();
  const entry = (a: Float32Array): TensorEntry =>
    cache.dtype === 'float16' ? { dtype: 'F16', shape, data: bytesOf(floatArrayToHalf(a)) } : { dtype: 'F32', shape, data: bytesOf(a) };
  for (let l = 0; l < cache.layers; l++) {
    tensors.set(kvTensorName(l, 'key'), entry(cache.keys[l]));
    tensors.set(kvTensorName(l, 'value'), entry(cache.values[l]));
  }
  const metadata: Record<string, string> = {
    ...meta.extra,
    producer: 'kvtc',
    tokens: String(cache.tokens),
    start_position: String(cache.startPosition),
    layers: String(cache.layers),
    kv_heads: String(cache.kvHeads),
    head_dim: String(cache.headDim),
    dtype: cache.dtype,
  };
  if (meta.model !== undefined) metadata.model = meta.model;
  if (meta.fingerprint !== undefined) metadata.fingerprint = meta.fingerprint;
  return serializeSafetensors(tensors, metadata);
}

/** Writes atomically; returns the bytes written. */
export async function writeKvCache(path: string, cache: KvCache, meta: KvFileMeta = {}): Promise<number> {
  const bytes = serializeKvCache(cache, meta);
  await writeFileAtomic(path, bytes);
  return bytes.byteLength;
}

export interface KvFile {
  cache: KvCache;
  metadata: Record<string, string>;
}

function invalid(source: string, message: string, context: Record<string, unknown> = {}): KvtcError {
  return fileError('KV_INVALID', source, message, 'Re-create the file with `kvtc capture` (or `kvtc decode`).', context);
}

/** Validates and converts a parsed safetensors file into a KvCache. */
export function kvCacheFromSafetensors(file: SafetensorsFile, source = '<buffer>'): KvFile {
  const { tensors, metadata } = file;
  let layers = 0;
  while (tensors.has(kvTensorName(layers, 'key'))) layers++;
  if (layers === 0) throw invalid(source, `no tensor named ${kvTensorName(0, 'key')}; expected present.{i}.key|value`);
  const first = tensors.get(kvTensorName(0, 'key'))!;
  if (first.shape.length !== 4 || first.shape[0] !== 1) {
    throw invalid(source, `${kvTensorName(0, 'key')} has shape [${first.shape}]; expected [1, kv_heads, tokens, head_dim]`);
  }
  if (first.dtype !== 'F16' && first.dtype !== 'F32')
    throw invalid(source, `${kvTensorName(0, 'key')} is ${first.dtype}; expected F16 or F32`);
  const [, kvHeads, tokens, headDim] = first.shape;
  const dtype: KvDtype = first.dtype === 'F16' ? 'float16' : 'float32';
  const keys: Float32Array[] = [];
  const values: Float32Array[] = [];
  for (let l = 0; l < layers; l++) {
    for (const kind of ['key', 'value'] as const) {
      const name = kvTensorName(l, kind);
      const t = tensors.get(name);
      if (!t) throw invalid(source, `missing ${name} (found ${kvTensorName(l, 'key')})`);
      if (t.dtype !== first.dtype) throw invalid(source, `${name} is ${t.dtype} but ${kvTensorName(0, 'key')} is ${first.dtype}`);
      if (t.shape.join() !== first.shape.join()) throw invalid(source, `${name} has shape [${t.shape}], expected [${first.shape}]`);
      const raw = toTypedArray(t);
      const a = raw instanceof Uint16Array ? halfArrayToFloat(raw) : (raw as Float32Array);
      for (let i = 0; i < a.length; i++) {
        if (!Number.isFinite(a[i])) {
          const h = Math.floor(i / (tokens * headDim));
          const tok = Math.floor(i / headDim) % tokens;
          throw invalid(source, `${name} has a non-finite value (${a[i]}) at index ${i} (head ${h}, token ${tok}, dim ${i % headDim})`, {
            tensor: name,
            index: i,
          });
        }
      }
      (kind === 'key' ? keys : values).push(a);
    }
  }
  if (tensors.has(kvTensorName(layers, 'value'))) throw invalid(source, `${kvTensorName(layers, 'value')} has no matching key`);
  const declared = metadata.layers === undefined ? undefined : Number(metadata.layers);
  if (declared !== undefined && declared !== layers) throw invalid(source, `metadata says ${declared} layers but the file has ${layers}`);
  const startPosition = metadata.start_position === undefined ? 0 : Number(metadata.start_position);
  if (!Number.isInteger(startPosition) || startPosition < 0)
    throw invalid(source, `metadata start_position "${metadata.start_position}" is not a non-negative integer`);
  return { cache: { layers, kvHeads, headDim, tokens, dtype, keys, values, startPosition }, metadata };
}

export async function readKvCache(path: string): Promise<KvFile> {
  return kvCacheFromSafetensors(await readSafetensors(path), path);
}

export function parseKvCache(bytes: Uint8Array, source = '<buffer>'): KvFile {
  return kvCacheFromSafetensors(parseSafetensors(bytes, source), source);
}

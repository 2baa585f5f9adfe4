/**
 * KV cache <-> safetensors, in the layout ONNX Runtime and transformers use:
 *   present.{i}.key: [1, kv_heads, tokens, head_dim], present.{i}.value: [1, kv_heads, tokens, value_head_dim]
 *   (value_head_dim = head_dim but for MLA latents and other caches whose values have another
 *   width), F16 or F32 (the model's dtype); BF16 is read too, as float32 (exact: a bf16 is a
 *   float32 with its low 16 bits zero), and such a cache's dtype is float32.
 *   __metadata__: format, producer, model, fingerprint, tokens, start_position, layers, kv_heads,
 *   head_dim, value_head_dim (only when it differs from head_dim), dtype
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
import { valueDimOf, type KvCache, type KvDtype } from './types.js';

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
  const valueDim = valueDimOf(cache);
  const tensors = new Map<string, TensorEntry>();
  const entry = (a: Float32Array, dim: number): TensorEntry => {
    const shape = [1, cache.kvHeads, cache.tokens, dim];
    return cache.dtype === 'float16'
      ? { dtype: 'F16', shape, data: bytesOf(floatArrayToHalf(a)) }
      : { dtype: 'F32', shape, data: bytesOf(a) };
  };
  for (let l = 0; l < cache.layers; l++) {
    tensors.set(kvTensorName(l, 'key'), entry(cache.keys[l], cache.headDim));
    tensors.set(kvTensorName(l, 'value'), entry(cache.values[l], valueDim));
  }
  const metadata: Record<string, string> = {
    ...meta.extra,
    producer: 'kvtc',
    tokens: String(cache.tokens),
    start_position: String(cache.startPosition),
    layers: String(cache.layers),
    kv_heads: String(cache.kvHeads),
    head_dim: String(cache.headDim),
    ...(valueDim !== cache.headDim ? { value_head_dim: String(valueDim) } : {}),
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

/**
 * Which tensor number holds each layer of a format-3 profile with `model.cache_layers`: the model's
 * layer numbers when the file has every one (a KV dump's files; a whole-model capture read by one
 * pipeline stage), else the profile's own order 0..L-1 when the file holds exactly those (what
 * `kvtc decode` writes). docs/kv-dumps.md §3.
 */
export function layerIdsForCacheLayers(names: Iterable<string>, cacheLayers: readonly number[], source: string): number[] {
  const all = new Set(names);
  if (cacheLayers.every((l) => all.has(kvTensorName(l, 'key')))) return [...cacheLayers];
  const named = [...all]
    .map((n) => /^present\.(\d{1,9})\.key$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
  if (named.length === cacheLayers.length && named.every((n, i) => n === i)) return named;
  throw invalid(
    source,
    `the file's layers are present.{${named.slice(0, 12).join(',')}${named.length > 12 ? ',…' : ''}}; the profile's cache layers are model layers ${cacheLayers.join(',')}: the file must name them so (as a KV dump does) or hold exactly ${cacheLayers.length} layers 0..${cacheLayers.length - 1} in the profile's order`,
  );
}

/**
 * Validates and converts a parsed safetensors file into a KvCache. `cacheLayers` (a format-3
 * profile's): read the layers by either naming (layerIdsForCacheLayers); absent: present.0, 1, ….
 */
export function kvCacheFromSafetensors(file: SafetensorsFile, source = '<buffer>', cacheLayers?: readonly number[]): KvFile {
  const { tensors, metadata } = file;
  const ids = cacheLayers ? layerIdsForCacheLayers(tensors.keys(), cacheLayers, source) : undefined;
  let layers = 0;
  if (ids) layers = ids.length;
  else while (tensors.has(kvTensorName(layers, 'key'))) layers++;
  if (layers === 0) throw invalid(source, `no tensor named ${kvTensorName(0, 'key')}; expected present.{i}.key|value`);
  const id = (l: number) => (ids ? ids[l] : l);
  const first = tensors.get(kvTensorName(id(0), 'key'))!;
  if (first.shape.length !== 4 || first.shape[0] !== 1) {
    throw invalid(source, `${kvTensorName(id(0), 'key')} has shape [${first.shape}]; expected [1, kv_heads, tokens, head_dim]`);
  }
  if (first.dtype !== 'F16' && first.dtype !== 'F32' && first.dtype !== 'BF16')
    throw invalid(source, `${kvTensorName(id(0), 'key')} is ${first.dtype}; expected F16, F32 or BF16`);
  const [, kvHeads, tokens, headDim] = first.shape;
  // Values may be narrower or wider than keys (MLA latents): their shape is present.0.value's.
  const firstValue = tensors.get(kvTensorName(id(0), 'value'));
  if (!firstValue) throw invalid(source, `missing ${kvTensorName(id(0), 'value')} (found ${kvTensorName(id(0), 'key')})`);
  const valueShape = [1, kvHeads, tokens, firstValue.shape[3]];
  if (firstValue.shape.length !== 4 || firstValue.shape.slice(0, 3).join() !== valueShape.slice(0, 3).join() || !(firstValue.shape[3] >= 1))
    throw invalid(
      source,
      `${kvTensorName(id(0), 'value')} has shape [${firstValue.shape}]; expected [1, ${kvHeads}, ${tokens}, value_head_dim] (the keys' heads and tokens)`,
    );
  const valueDim = firstValue.shape[3];
  // BF16 (a float32 with its low half dropped) reads exactly as float32; only F16 stays float16.
  const dtype: KvDtype = first.dtype === 'F16' ? 'float16' : 'float32';
  const keys: Float32Array[] = [];
  const values: Float32Array[] = [];
  for (let l = 0; l < layers; l++) {
    for (const kind of ['key', 'value'] as const) {
      const name = kvTensorName(id(l), kind);
      const t = tensors.get(name);
      if (!t) throw invalid(source, `missing ${name} (found ${kvTensorName(id(l), 'key')})`);
      if (t.dtype !== first.dtype) throw invalid(source, `${name} is ${t.dtype} but ${kvTensorName(id(0), 'key')} is ${first.dtype}`);
      const want = kind === 'key' ? first.shape : valueShape;
      if (t.shape.join() !== want.join()) throw invalid(source, `${name} has shape [${t.shape}], expected [${want}]`);
      const hd = kind === 'key' ? headDim : valueDim;
      const raw = toTypedArray(t);
      const a =
        t.dtype === 'BF16' ? bf16ToFloat(raw as Uint16Array) : raw instanceof Uint16Array ? halfArrayToFloat(raw) : (raw as Float32Array);
      for (let i = 0; i < a.length; i++) {
        if (!Number.isFinite(a[i])) {
          const h = Math.floor(i / (tokens * hd));
          const tok = Math.floor(i / hd) % tokens;
          throw invalid(source, `${name} has a non-finite value (${a[i]}) at index ${i} (head ${h}, token ${tok}, dim ${i % hd})`, {
            tensor: name,
            index: i,
          });
        }
      }
      (kind === 'key' ? keys : values).push(a);
    }
  }
  // A file named by model layer may hold more layers than the profile reads (another stage's).
  const ownOrder = !ids || ids.every((n, i) => n === i);
  if (!ids && tensors.has(kvTensorName(layers, 'value'))) throw invalid(source, `${kvTensorName(layers, 'value')} has no matching key`);
  const declared = metadata.layers === undefined ? undefined : Number(metadata.layers);
  if (ownOrder && declared !== undefined && declared !== layers)
    throw invalid(source, `metadata says ${declared} layers but the file has ${layers}`);
  const startPosition = metadata.start_position === undefined ? 0 : Number(metadata.start_position);
  if (!Number.isInteger(startPosition) || startPosition < 0)
    throw invalid(source, `metadata start_position "${metadata.start_position}" is not a non-negative integer`);
  const declaredValueDim = metadata.value_head_dim === undefined ? undefined : Number(metadata.value_head_dim);
  if (declaredValueDim !== undefined && declaredValueDim !== valueDim)
    throw invalid(source, `metadata says value_head_dim ${metadata.value_head_dim} but the value tensors have ${valueDim}`);
  return {
    cache: { layers, kvHeads, headDim, ...(valueDim !== headDim ? { valueDim } : {}), tokens, dtype, keys, values, startPosition },
    metadata,
  };
}

/** bfloat16 bits → float32 (exact: the bits are a float32's high half). */
function bf16ToFloat(h: Uint16Array): Float32Array {
  const u = new Uint32Array(h.length);
  for (let i = 0; i < h.length; i++) u[i] = h[i] << 16;
  return new Float32Array(u.buffer);
}

export async function readKvCache(path: string, cacheLayers?: readonly number[]): Promise<KvFile> {
  return kvCacheFromSafetensors(await readSafetensors(path), path, cacheLayers);
}

export function parseKvCache(bytes: Uint8Array, source = '<buffer>', cacheLayers?: readonly number[]): KvFile {
  return kvCacheFromSafetensors(parseSafetensors(bytes, source), source, cacheLayers);
}

/** The raw-token section of a blob: the sink and window tokens, stored uncompressed. */
import { KvtcError } from '../errors.js';
import { floatToHalf, halfToFloat } from '../io/fp16.js';
import { valueDimOf, type KvCache } from '../model/types.js';

/** Values per row of keys and of values (they differ when the cache's valueDim does, profile format 3). */
function rowDims(cache: KvCache): [number, number] {
  return [cache.headDim, valueDimOf(cache)];
}

/**
 * Raw-token section: for each layer, keys then values, [kvHeads, sink] then [kvHeads, window] rows
 * of headDim (keys) or valueDim (values), as fp16: the ratio is defined against fp16 (docs/profile-format.md §6). A float32
 * cache with a raw value fp16 cannot hold (|x| ≥ 65520 rounds to ∞) is stored as float32 instead
 * (header flag bit 1), losslessly; a float16 cache never holds one (KV_OUT_OF_RANGE: its values
 * are not what its dtype says). A non-finite value → KV_INVALID.
 */
export function rawSection(cache: KvCache, sink: number, window: number, source: string): { data: Uint8Array; float32: boolean } {
  const { layers, kvHeads, tokens } = cache;
  const dims = rowDims(cache);
  const vals = new Float32Array(layers * kvHeads * (sink + window) * (dims[0] + dims[1]));
  let at = 0;
  for (let l = 0; l < layers; l++) {
    for (const [kv, arr] of [cache.keys[l], cache.values[l]].entries()) {
      const headDim = dims[kv];
      for (let h = 0; h < kvHeads; h++) {
        const base = h * tokens * headDim;
        vals.set(arr.subarray(base, base + sink * headDim), at);
        at += sink * headDim;
        vals.set(arr.subarray(base + (tokens - window) * headDim, base + tokens * headDim), at);
        at += window * headDim;
      }
    }
  }
  const h = new Uint16Array(vals.length);
  let overflow = -1;
  for (let i = 0; i < vals.length; i++) {
    const x = floatToHalf(vals[i]);
    h[i] = x;
    if ((x & 0x7c00) === 0x7c00 && overflow < 0) overflow = i;
  }
  if (overflow < 0) return { data: new Uint8Array(h.buffer), float32: false };
  // fp16 ∞ or NaN: a non-finite input, or a finite one beyond fp16.
  for (let i = overflow; i < vals.length; i++)
    if (!Number.isFinite(vals[i])) throw nonFinite(source, cache, rawSite(cache, sink, window, i), vals[i]);
  if (cache.dtype === 'float32') return { data: new Uint8Array(vals.buffer), float32: true };
  const { layer, kind, head, token, dim } = rawSite(cache, sink, window, overflow);
  throw new KvtcError(
    'KV_OUT_OF_RANGE',
    `${source}: the ${kind} of layer ${layer}, head ${head}, token ${token} (position ${cache.startPosition + token}), dim ${dim} is ${vals[overflow]}, beyond fp16's ±65504, but the cache says its dtype is float16`,
    {
      fix: 'A float16 cache cannot hold this value: pass the cache as float32 (kvtc then stores its raw tokens as float32), or check how the cache was produced.',
      context: {
        source,
        layer,
        kind,
        head,
        token,
        position: cache.startPosition + token,
        dim,
        value: vals[overflow],
        dtype: cache.dtype,
      },
    },
  );
}

/** Where value i of a raw section sits: layer, key/value, head, cache token, dim. */
function rawSite(
  cache: KvCache,
  sink: number,
  window: number,
  i: number,
): { layer: number; kind: 'key' | 'value'; head: number; token: number; dim: number } {
  const { kvHeads, tokens } = cache;
  const [kd, vd] = rowDims(cache);
  const rows = kvHeads * (sink + window);
  // Each layer holds its key rows of kd values, then its value rows of vd.
  const layer = Math.floor(i / (rows * (kd + vd)));
  let at = i - layer * rows * (kd + vd);
  const isKey = at < rows * kd;
  if (!isKey) at -= rows * kd;
  const headDim = isKey ? kd : vd;
  const row = Math.floor(at / headDim);
  const r = row % (sink + window);
  return {
    layer,
    kind: isKey ? 'key' : 'value',
    head: Math.floor(row / (sink + window)),
    token: r < sink ? r : tokens - window + (r - sink),
    dim: at % headDim,
  };
}

export function nonFinite(
  source: string,
  cache: KvCache,
  at: { layer: number; kind: 'key' | 'value'; head: number; token: number; dim: number },
  value: number,
): KvtcError {
  const { layer, kind, head, token, dim } = at;
  return new KvtcError(
    'KV_INVALID',
    `${source}: the ${kind} of layer ${layer}, head ${head}, token ${token} (position ${cache.startPosition + token}), dim ${dim} is ${value}; a KV cache holds finite values`,
    {
      fix: "Check how the cache was produced (a NaN or ∞ in the model's KV output usually means an overflow in the model run).",
      context: { source, kind, layer, head, token, position: cache.startPosition + token, dim, value: String(value) },
    },
  );
}

/** Inverse of rawSection. Every value must be finite: an fp16 ∞/NaN (or a float32 one) means a corrupt blob. */
export function restoreRaw(data: Uint8Array, cache: KvCache, sink: number, window: number, float32: boolean, source: string): void {
  const { layers, kvHeads, tokens } = cache;
  const dims = rowDims(cache);
  const count = layers * kvHeads * (sink + window) * (dims[0] + dims[1]);
  const copy = data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
  let vals: Float32Array;
  let bad = -1;
  if (float32) {
    vals = new Float32Array(copy);
    for (let i = 0; i < count; i++) {
      if (!Number.isFinite(vals[i])) {
        bad = i;
        break;
      }
    }
  } else {
    vals = new Float32Array(count);
    const h = new Uint16Array(copy);
    for (let i = 0; i < count; i++) {
      const x = h[i];
      if ((x & 0x7c00) === 0x7c00) {
        bad = i;
        break;
      }
      vals[i] = halfToFloat(x);
    }
  }
  if (bad >= 0) {
    const { layer, kind, head, token, dim } = rawSite(cache, sink, window, bad);
    throw new KvtcError(
      'BLOB_INVALID',
      `${source}: the raw section stores a non-finite ${kind} for layer ${layer}, head ${head}, token ${token}, dim ${dim}; no encoder writes one`,
      {
        fix: 'The blob is corrupt or was not written by kvtc: re-encode the cache with `kvtc encode`.',
        context: { blob: source, layer, kind, head, token, dim },
      },
    );
  }
  let at = 0;
  for (let l = 0; l < layers; l++) {
    for (const [kv, arr] of [cache.keys[l], cache.values[l]].entries()) {
      const headDim = dims[kv];
      for (let h = 0; h < kvHeads; h++) {
        const base = h * tokens * headDim;
        arr.set(vals.subarray(at, at + sink * headDim), base);
        at += sink * headDim;
        arr.set(vals.subarray(at, at + window * headDim), base + (tokens - window) * headDim);
        at += window * headDim;
      }
    }
  }
}

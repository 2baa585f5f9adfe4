// Tested by test/dynamo/calibrate-export.test.ts.
/**
 * Running a whole KV cache through the emulated Dynamo kernels, the way KVBM would hand them
 * blocks: per (layer, K|V) basis, one kvtc_compress call over the cache's full blocks (rows in
 * the block layout), then kvtc_decompress, scattered back. Tokens outside full blocks (a partial
 * last block, or the start of a cache that begins mid-block) stay as they are; KVBM offloads
 * whole blocks only.
 *
 * Bytes are what the kernels store: per call, every range's 40-byte header, IntX per-row
 * float32 min/max, and the codes (kvtc_compressed_size). Dynamo applies no entropy coding: the
 * design doc lists an nvcomp DEFLATE pass as future work.
 */
import { KvtcError } from '../errors.js';
import { fp16BytesPerToken } from '../codec/blob.js';
import type { KvCache } from '../model/types.js';
import type { CacheCodec, Reconstruction } from '../evaluate/cache-codec.js';
import { fullBlocks, gatherBlockRows, scatterBlockRows, type BlockShape } from './blocks.js';
import type { DynamoBasis } from './fit.js';
import { kvtcCompress, kvtcDecompress, type BlockDtype, type Fp8Path, type KvtcConfigData } from './kernels.js';
import type { DynamoProfile } from './profile.js';

export function basisConfig(b: Pick<DynamoBasis, 'mean' | 'projection' | 'features' | 'pca_components' | 'ranges'>): KvtcConfigData {
  return { mean: b.mean, projection: b.projection, features: b.features, pca_components: b.pca_components, ranges: b.ranges };
}

export interface DynamoSetup {
  shape: BlockShape & { layers: number };
  fp8Path: Fp8Path;
  /** One config per (layer, kind). */
  bases: { layer: number; kind: 'key' | 'value'; config: KvtcConfigData }[];
}

export function setupFromProfile(profile: DynamoProfile): DynamoSetup {
  const m = profile.manifest;
  return {
    shape: {
      layers: m.model.layers,
      kvHeads: m.model.kv_heads,
      headDim: m.model.head_dim,
      blockTokens: m.block.tokens_per_block,
      layout: m.block.layout,
    },
    fp8Path: m.block.fp8_path,
    bases: profile.bases.map((b) => ({ layer: b.layer, kind: b.kind, config: basisConfig(b) })),
  };
}

export interface DynamoApplyStats {
  /** Tokens inside full blocks (compressed). */
  compressedTokens: number;
  blocks: number;
  /** Bytes of all kernel buffers (headers included). */
  compressedBytes: number;
  /** The same without the range headers. */
  rowBytes: number;
  /** fp16 bytes of the compressed tokens. */
  fp16BytesCompressed: number;
  /** Per layer: Σ (x̂ − x)² and Σ x² over the compressed tokens, keys and values. */
  sq: { key: { err: Float64Array; ref: Float64Array }; value: { err: Float64Array; ref: Float64Array } };
}

function checkCache(cache: KvCache, s: DynamoSetup['shape']): void {
  if (cache.layers !== s.layers || cache.kvHeads !== s.kvHeads || cache.headDim !== s.headDim) {
    throw new KvtcError(
      'PROFILE_MISMATCH',
      `the cache has ${cache.layers} layers × ${cache.kvHeads} KV heads × ${cache.headDim}; the dynamo profile is for ${s.layers} × ${s.kvHeads} × ${s.headDim}`,
      {
        fix: 'Use the dynamo profile calibrated for this model.',
        context: { cache: [cache.layers, cache.kvHeads, cache.headDim], profile: [s.layers, s.kvHeads, s.headDim] },
      },
    );
  }
}

/** Compresses and restores one cache; returns the restored copy and the byte counts. */
export function applyDynamo(
  setup: DynamoSetup,
  cache: KvCache,
  opts: { dtype?: BlockDtype } = {},
): { cache: KvCache; stats: DynamoApplyStats } {
  const s = setup.shape;
  checkCache(cache, s);
  const dtype: BlockDtype = opts.dtype ?? (cache.dtype === 'float16' ? 'f16' : 'f32');
  const out: KvCache = {
    ...cache,
    keys: cache.keys.map((k) => Float32Array.from(k)),
    values: cache.values.map((v) => Float32Array.from(v)),
  };
  const { first, count } = fullBlocks(cache, s.blockTokens);
  const L = cache.layers;
  const sq = { key: { err: new Float64Array(L), ref: new Float64Array(L) }, value: { err: new Float64Array(L), ref: new Float64Array(L) } };
  let compressedBytes = 0;
  let rowBytesSum = 0;
  if (count > 0) {
    for (const b of setup.bases) {
      const rows = gatherBlockRows(cache, b.kind, b.layer, s, first, count);
      const buf = kvtcCompress(rows, b.config, count, setup.fp8Path);
      compressedBytes += buf.byteLength;
      rowBytesSum += buf.byteLength - 40 * b.config.ranges.length;
      const back = kvtcDecompress(buf, b.config, count, dtype);
      const acc = sq[b.kind];
      let e = 0;
      let r = 0;
      for (let i = 0; i < rows.length; i++) {
        const d = back[i] - rows[i];
        e += d * d;
        r += rows[i] * rows[i];
      }
      acc.err[b.layer] += e;
      acc.ref[b.layer] += r;
      scatterBlockRows(back, out, b.kind, b.layer, s, first, count);
    }
  }
  const compressedTokens = count * s.blockTokens;
  return {
    cache: out,
    stats: {
      compressedTokens,
      blocks: count,
      compressedBytes,
      rowBytes: rowBytesSum,
      fp16BytesCompressed: compressedTokens * fp16BytesPerToken({ layers: L, kvHeads: s.kvHeads, headDim: s.headDim }),
      sq,
    },
  };
}

export type DynamoCacheCodec = Omit<CacheCodec, 'name'> & { name: 'dynamo' };

/**
 * A CacheCodec-style adapter for `kvtc evaluate` / `kvtc bench`: apply(cache) runs the emulated
 * kernels. No tokens are protected (sink 0, window 0): Dynamo compresses every full block; only
 * the partial last block stays uncompressed. `bytes` counts those raw tokens as fp16.
 */
export function dynamoCodec(profile: DynamoProfile, opts: { dtype?: BlockDtype } = {}): DynamoCacheCodec {
  const setup = setupFromProfile(profile);
  return {
    name: 'dynamo',
    sink: 0,
    window: 0,
    async apply(cache: KvCache): Promise<Reconstruction> {
      const { cache: restored, stats } = applyDynamo(setup, cache, opts);
      const perToken = fp16BytesPerToken(cache);
      const raw = (cache.tokens - stats.compressedTokens) * perToken;
      return {
        cache: restored,
        compressedTokens: stats.compressedTokens,
        bytes: stats.compressedBytes + raw,
        compressedBytes: stats.compressedBytes,
      };
    },
    release: async () => {},
  };
}

export interface DynamoMeasurement {
  blocks: number;
  /** Blocks per kernel call (per basis per cache), averaged. */
  blocksPerCall: number;
  ratioRows: number;
  ratioCalls: number;
  relKey: number[];
  relValue: number[];
}

/** Ratio and per-layer relative error ‖x̂−x‖/‖x‖ of a setup over caches (compressed tokens only). */
export function measureDynamo(setup: DynamoSetup, caches: KvCache[]): DynamoMeasurement {
  const L = setup.shape.layers;
  const num = { key: new Float64Array(L), value: new Float64Array(L) };
  const den = { key: new Float64Array(L), value: new Float64Array(L) };
  let fp16 = 0;
  let rows = 0;
  let calls = 0;
  let blocks = 0;
  for (const c of caches) {
    const { stats } = applyDynamo(setup, c);
    for (const k of ['key', 'value'] as const) {
      for (let l = 0; l < L; l++) {
        num[k][l] += stats.sq[k].err[l];
        den[k][l] += stats.sq[k].ref[l];
      }
    }
    fp16 += stats.fp16BytesCompressed;
    rows += stats.rowBytes;
    calls += stats.compressedBytes;
    blocks += stats.blocks;
  }
  const rel = (k: 'key' | 'value') => Array.from(num[k], (v, l) => Math.sqrt(v / Math.max(den[k][l], 1e-30)));
  return {
    blocks,
    blocksPerCall: caches.length ? blocks / caches.length : 0,
    ratioRows: fp16 / rows,
    ratioCalls: fp16 / calls,
    relKey: rel('key'),
    relValue: rel('value'),
  };
}

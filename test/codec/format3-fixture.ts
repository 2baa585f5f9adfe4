// Test-only: format-3 profiles (docs/profile-format.md §2.4) fitted, without any model, from
// synthetic caches of known low-rank structure: an MLA-like latent cache (1 KV head, keys 8 wide
// with RoPE, values 24 wide) and a tensor-parallel shard of a hybrid model's attention layers
// (cache_layers [1, 3, 4] of 6). The plans come from a PCA of the synthetic features (src/fit via
// test/fit/fit-reference.ts); the measured figures from encoding a report cache with the profile.
import { join } from 'node:path';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile, type Profile } from '../../src/profile/read.js';
import { format3ModelFields, kvDumpFingerprintId, shardManifest } from '../../src/profile/format3.js';
import { manifestRope } from '../../src/profile/rope.js';
import { PROFILE_FORMAT, PROFILE_FORMAT_VERSION } from '../../src/profile/schema.js';
import { writeProfile, type ManifestDraft } from '../../src/profile/write.js';
import { gatherFeatures } from '../../src/fit/features.js';
import { RopeTable } from '../../src/rope/rope-table.js';
import { valueDimOf, type KvCache, type LayerRope, type ModelSpec } from '../../src/model/types.js';
import type { BasisPlan, KvKind } from '../../src/codec/types.js';
import { fitBasisPlan } from '../fit/fit-reference.js';
import { rng } from './rng.js';

export const ROPE: LayerRope = { theta: 10000, rotaryDim: 8, layout: 'half' };

/** The cache geometry and format-3 fields of a synthetic model (a ModelSpec's, as calibrate --kv would fill it). */
export type Geometry = Pick<
  ModelSpec,
  'layers' | 'kvHeads' | 'headDim' | 'valueDim' | 'cacheLayout' | 'modelLayers' | 'cacheLayers' | 'shard' | 'rope'
> & { family: string; grouping: 'layer' | 'all' };

/** DeepSeek-V3-like latent cache: one head, k_rot 8 wide with RoPE, c_kv 24 wide; model layers 1, 3, 4 of 6. */
export const MLA: Geometry = {
  family: 'deepseek_v3',
  layers: 3,
  kvHeads: 1,
  headDim: 8,
  valueDim: 24,
  cacheLayout: 'mla-latent',
  modelLayers: 6,
  cacheLayers: [1, 3, 4],
  rope: [ROPE, ROPE, ROPE],
  grouping: 'layer',
};

/** TP rank 1 of 2 (global KV heads 2 and 3) of a hybrid model whose attention layers are 1, 3 and 4 of 6; layer 3 has no RoPE. */
export const SHARD: Geometry = {
  family: 'qwen3_next',
  layers: 3,
  kvHeads: 2,
  headDim: 8,
  modelLayers: 6,
  cacheLayers: [1, 3, 4],
  shard: { tpRank: 1, tpSize: 2, ppRank: 0, ppSize: 1, kvHeads: [2, 3] },
  rope: [ROPE, null, ROPE],
  grouping: 'all',
};

/** Latent dimensions of the synthetic features of one head: keys and values are rank-k signals plus 2% noise. */
const RANK = { key: 3, value: 5 };

/**
 * A synthetic cache of geometry `g`: per layer and head, x = A·z + noise with A fixed by the
 * model (so every cache shares the structure a PCA finds) and z per token from `seed`; keys are
 * then rotated by their layer's RoPE at position startPosition + t, as a model stores them.
 */
export function syntheticCache(g: Geometry, tokens: number, seed: number, startPosition = 5): KvCache {
  const model = rng(1234);
  const tok = rng(seed);
  const kinds = { key: g.headDim, value: valueDimOf(g) };
  const mix = (kind: KvKind) =>
    Array.from({ length: g.layers * g.kvHeads }, () =>
      Float64Array.from({ length: kinds[kind] * RANK[kind] }, () => model.normal() * (kind === 'key' ? 2 : 0.5)),
    );
  const A = { key: mix('key'), value: mix('value') };
  const make = (kind: KvKind): Float32Array[] =>
    Array.from({ length: g.layers }, (_, l) => {
      const D = kinds[kind];
      const k = RANK[kind];
      const out = new Float32Array(g.kvHeads * tokens * D);
      const rope = kind === 'key' ? g.rope[l] : null;
      const table = rope ? new RopeTable(rope, D, startPosition + tokens) : undefined;
      for (let h = 0; h < g.kvHeads; h++) {
        const a = A[kind][l * g.kvHeads + h];
        for (let t = 0; t < tokens; t++) {
          const z = Array.from({ length: k }, () => tok.normal());
          const o = (h * tokens + t) * D;
          for (let d = 0; d < D; d++) {
            let s = 0.02 * tok.normal();
            for (let j = 0; j < k; j++) s += a[d * k + j] * z[j];
            out[o + d] = s;
          }
          table?.at(startPosition + t).rotate(out, o, out, o, 1);
        }
      }
      return out;
    });
  return {
    layers: g.layers,
    kvHeads: g.kvHeads,
    headDim: g.headDim,
    ...(g.valueDim !== undefined && g.valueDim !== g.headDim ? { valueDim: g.valueDim } : {}),
    tokens,
    dtype: 'float32',
    startPosition,
    keys: make('key'),
    values: make('value'),
  };
}

/** One plan: PCA of the fit cache's features (float64 covariance), bits allocated on the held-out cache's. */
function fitPlan(g: Geometry, kind: KvKind, layers: number[], fit: KvCache, heldout: KvCache, ratio: number): BasisPlan {
  const X = gatherFeatures(fit, { kind, layers }, g.rope);
  const H = gatherFeatures(heldout, { kind, layers }, g.rope);
  const n = fit.tokens;
  const p = X.length / n;
  const mean = new Float64Array(p);
  for (let t = 0; t < n; t++) for (let i = 0; i < p; i++) mean[i] += X[t * p + i] / n;
  const cov = new Float64Array(p * p);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < p; i++) {
      const yi = X[t * p + i] - mean[i];
      for (let j = 0; j <= i; j++) cov[i * p + j] += (yi * (X[t * p + j] - mean[j])) / n;
    }
  }
  for (let i = 0; i < p; i++) for (let j = 0; j < i; j++) cov[j * p + i] = cov[i * p + j];
  return fitBasisPlan({ kind, layers, dim: p, mean, cov, heldout: H, budgetBits: Math.floor((16 * p) / ratio) });
}

/** Per-layer ‖x̂ − x‖/‖x‖ over tokens [t0, t1) of one kind. */
export function relErrors(a: KvCache, b: KvCache, kind: KvKind, t0: number, t1: number): number[] {
  const D = kind === 'key' ? a.headDim : valueDimOf(a);
  return Array.from({ length: a.layers }, (_, l) => {
    const x = (kind === 'key' ? a.keys : a.values)[l];
    const y = (kind === 'key' ? b.keys : b.values)[l];
    let num = 0;
    let den = 0;
    for (let h = 0; h < a.kvHeads; h++) {
      for (let i = (h * a.tokens + t0) * D; i < (h * a.tokens + t1) * D; i++) {
        num += (x[i] - y[i]) ** 2;
        den += x[i] ** 2;
      }
    }
    return Math.sqrt(num / den);
  });
}

export const SETTINGS = { sink: 4, window: 8, ratio: 4 };

/** The manifest draft of geometry `g` (fingerprint of a KV dump), with the given measured figures. */
export function format3Draft(g: Geometry, measured: { key: number[]; value: number[] }, contextTokens: number): ManifestDraft {
  const specSha256 = 'ab'.repeat(32);
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  return {
    format: PROFILE_FORMAT,
    format_version: PROFILE_FORMAT_VERSION,
    producer: { name: 'kvtc', version: '0.1.0' },
    model: {
      name: `synthetic-${g.family}`,
      architecture: 'SyntheticForCausalLM',
      family: g.family,
      fingerprint: { id: kvDumpFingerprintId(specSha256), spec_sha256: specSha256, source: 'kv-dump' },
      layers: g.layers,
      heads: 4,
      kv_heads: g.kvHeads,
      head_dim: g.headDim,
      kv_dtype: 'float32',
      rope: manifestRope(g.rope),
      max_positions: 4096,
      ...format3ModelFields(g),
    },
    ...(g.shard ? { shard: shardManifest(g.shard) } : {}),
    settings: {
      ratio_target: SETTINGS.ratio,
      sink: SETTINGS.sink,
      window: SETTINGS.window,
      grouping: g.grouping,
      tokens: 600,
      heldout: 300,
      chunk: 256,
      seed: 0,
      granule: 1,
      entropy: 'deflate-rle',
    },
    calibration: {
      sources: [{ name: 'synthetic', sha256: 'cd'.repeat(32), bytes: 1 }],
      tokens_fit: 600,
      tokens_heldout: 300,
      sequences: 3,
    },
    measured: {
      context_tokens: contextTokens,
      ratio_compressed: 1,
      ratio_blob: 1,
      rel_error: { key: measured.key, value: measured.value, key_mean: mean(measured.key), value_mean: mean(measured.value) },
    },
  };
}

/**
 * Fits and writes the format-3 profile of `g` into `dir`: plans from a PCA of a 600-token fit
 * cache, bits allocated on a 300-token held-out cache, measured figures from encoding and decoding
 * a 400-token report cache with the profile's own codec (as calibrate measures them).
 */
export async function writeFormat3Profile(g: Geometry, dir: string): Promise<Profile> {
  const fit = syntheticCache(g, 600, 1);
  const heldout = syntheticCache(g, 300, 2);
  const layerSets =
    g.grouping === 'all' ? [Array.from({ length: g.layers }, (_, l) => l)] : Array.from({ length: g.layers }, (_, l) => [l]);
  const plans: BasisPlan[] = [];
  for (const kind of ['key', 'value'] as const)
    for (const layers of layerSets) plans.push(fitPlan(g, kind, layers, fit, heldout, SETTINGS.ratio));
  const report = syntheticCache(g, 400, 3);
  const zero = Array<number>(g.layers).fill(0);
  const first = join(dir, 'draft');
  await writeProfile(first, format3Draft(g, { key: zero, value: zero }, report.tokens), plans);
  const codec = await codecFromProfile(await readProfile(first));
  let measured: { key: number[]; value: number[] };
  try {
    const { cache: out } = await codec.decode((await codec.encode(report)).blob);
    const t1 = report.tokens - SETTINGS.window;
    measured = { key: relErrors(report, out, 'key', SETTINGS.sink, t1), value: relErrors(report, out, 'value', SETTINGS.sink, t1) };
  } finally {
    await codec.release();
  }
  await writeProfile(dir, format3Draft(g, measured, report.tokens), plans);
  return readProfile(dir);
}

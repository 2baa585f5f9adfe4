// Regenerates python/tests/fixtures/ (the pytest suite's committed inputs) with the Node CLI:
//   npx tsx scripts/make-python-fixtures.ts
// Copies the two profiles the suite reads (format 2: kvtc-profiles/stories260k; format 1:
// test/fixtures/profile-v1), captures 256 tokens of the bundled model, writes a float16 copy of
// that cache, and encodes and decodes each (profile, cache) case with `kvtc encode` / `kvtc decode`.
// The capture and the codec's projection run on ONNX Runtime, whose float results differ in the
// last bits between CPUs, so a rerun on another machine can change the cache, blobs and decodes
// slightly: the suite compares them with tolerances, never by hash.
// `profile-v2-rope` is profile-v2 with a RoPE per layer (format 2: half, NoPE, interleaved partial
// yarn with an attention factor, llama3, longrope; the tensors unchanged, the id recomputed), so that
// the torch path is checked on Node blobs of a profile whose layers differ (both longrope factor sets:
// 256 tokens use the long one, the 150-token float16 cache the short one).
// Format 3 (issue 20): `profile-v3-mla` and `profile-v3-shard` are what `kvtc calibrate --kv` writes
// from KV dumps made up here (seeded low-rank caches): an MLA-like latent cache (one head, keys 8 wide,
// values 24) of model layers 0, 1 and 3 of 4, and rank tp 1 / pp 1 of `--shards tp=2,pp=2` on a
// 4-KV-head dump of 5 layers (its shard, cache layers 3–4 and heads 2–3); `v3-mla` / `v3-shard` encode
// and decode one more made-up cache (`cache-v3-*.safetensors`, profile layer order) with them.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bytesOf, serializeSafetensors, type TensorEntry } from '../src/io/safetensors.js';
import { parseKvCache, serializeKvCache } from '../src/model/kv-io.js';
import type { KvCache } from '../src/model/types.js';
import { computeProfileId } from '../src/profile/id.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const OUT = join(ROOT, 'python', 'tests', 'fixtures');
const BIN = join(ROOT, 'bin', 'kvtc.js');
const PROFILES = { 'profile-v2': join(ROOT, 'kvtc-profiles', 'stories260k'), 'profile-v1': join(ROOT, 'test', 'fixtures', 'profile-v1') };
const FILES = ['kvtc-profile.json', 'kvtc-profile.safetensors'];
/** (blob name, profile folder, cache file): the cases the suite decodes and re-encodes. */
const CASES: [string, string, string][] = [
  ['v2-f32', 'profile-v2', 'cache-f32.safetensors'],
  ['v2-f16', 'profile-v2', 'cache-f16.safetensors'],
  ['v1-f32', 'profile-v1', 'cache-f32.safetensors'],
  ['v2rope-f32', 'profile-v2-rope', 'cache-f32.safetensors'],
  ['v2rope-f16-150', 'profile-v2-rope', 'cache-f16-150.safetensors'],
  ['v3-mla', 'profile-v3-mla', 'cache-v3-mla.safetensors'],
  ['v3-shard', 'profile-v3-shard', 'cache-v3-shard.safetensors'],
];
/** Must equal python/tests/test_codec.py's PER_LAYER_ROPE (test_torch.py checks the profile against it). */
const PER_LAYER_ROPE = [
  { layers: [0], theta: 10000, rotary_dim: 8, layout: 'half' },
  { layers: [1], none: true },
  {
    layers: [2],
    theta: 10000,
    rotary_dim: 4,
    layout: 'interleaved',
    attention_factor: 1.25,
    scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 64, beta_fast: 32, beta_slow: 1, truncate: true },
  },
  {
    layers: [3],
    theta: 500000,
    rotary_dim: 8,
    layout: 'half',
    scaling: { type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
  },
  {
    layers: [4],
    theta: 10000,
    rotary_dim: 8,
    layout: 'half',
    scaling: { type: 'longrope', original_max_position_embeddings: 200, short_factor: [1, 1.5, 2, 4], long_factor: [1, 2, 4, 8] },
  },
];

// Paths are relative to OUT (the CLI runs there) so that no machine's path lands in a file's metadata.
function kvtc(...args: string[]): void {
  const r = spawnSync(process.execPath, [BIN, ...args, '--force', '--json'], { cwd: OUT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`kvtc ${args.join(' ')} failed (exit ${r.status}):\n${r.stdout}${r.stderr}`);
}

for (const [name, src] of Object.entries(PROFILES)) {
  rmSync(join(OUT, name), { recursive: true, force: true });
  mkdirSync(join(OUT, name), { recursive: true });
  for (const f of FILES) copyFileSync(join(src, f), join(OUT, name, f));
}
{
  const dir = join(OUT, 'profile-v2-rope');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  copyFileSync(join(OUT, 'profile-v2', 'kvtc-profile.safetensors'), join(dir, 'kvtc-profile.safetensors'));
  const m = JSON.parse(readFileSync(join(OUT, 'profile-v2', 'kvtc-profile.json'), 'utf8'));
  m.model.rope = PER_LAYER_ROPE;
  m.profile_id = computeProfileId(m);
  writeFileSync(join(dir, 'kvtc-profile.json'), JSON.stringify(m, null, 2) + '\n');
}
kvtc(
  'capture',
  '--text',
  join(ROOT, 'calibration-data', 'inaugural-1789-Washington.txt'),
  '--max-tokens',
  '256',
  '--out',
  'cache-f32.safetensors',
  '--quiet',
);

// The bundled model's KV is float32; a float16 cache of the same values (rounded to nearest even,
// as a float16 model would store them) covers the blob's float16 flag and fp16 decode.
const { cache, metadata } = parseKvCache(readFileSync(join(OUT, 'cache-f32.safetensors')), 'cache-f32.safetensors');
writeFileSync(
  join(OUT, 'cache-f16.safetensors'),
  serializeKvCache({ ...cache, dtype: 'float16' }, { model: metadata.model, fingerprint: metadata.fingerprint }),
);
// The first 150 tokens as float16: for the per-layer profile, a cache short enough for longrope's short factors.
const first = (a: Float32Array[]) =>
  a.map((x) => {
    const out = new Float32Array(cache.kvHeads * 150 * cache.headDim);
    for (let h = 0; h < cache.kvHeads; h++)
      out.set(x.subarray(h * cache.tokens * cache.headDim, (h * cache.tokens + 150) * cache.headDim), h * 150 * cache.headDim);
    return out;
  });
writeFileSync(
  join(OUT, 'cache-f16-150.safetensors'),
  serializeKvCache(
    { ...cache, dtype: 'float16', tokens: 150, keys: first(cache.keys), values: first(cache.values) },
    { model: metadata.model, fingerprint: metadata.fingerprint },
  ),
);

// ---- format 3: KV dumps (docs/kv-dumps.md) of made-up low-rank caches, calibrated with --kv ----

/** inv_freq of the default rule, rounded to float32 as a model's rotary buffer holds it. */
const invFreq = (theta: number, dim: number) => Array.from({ length: dim / 2 }, (_, i) => Math.fround(1 / theta ** ((2 * i) / dim)));

/** mulberry32: a small seeded generator, so a rerun writes the same dumps. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function gaussian(r: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

interface MadeUp {
  layers: number;
  kvHeads: number;
  headDim: number;
  valueDim: number;
}
/**
 * Per (layer, kind) a fixed rank-3 mixing and offset; each token = z·A + offset + 0.05 noise, [kvHeads, tokens, width];
 * keys then rotated as a model stores them (RoPE over the whole head, half layout, `theta`).
 */
function madeUpCaches(g: MadeUp, seed: number, theta: number, sequences: { tokens: number; start: number }[]): KvCache[] {
  const n = gaussian(rng(seed));
  const RANK = 3;
  const mix = Array.from({ length: g.layers }, (_, l) =>
    [g.headDim, g.valueDim].map((w) => ({
      A: Float64Array.from({ length: RANK * g.kvHeads * w }, () => n() * (1 + l)),
      b: Float64Array.from({ length: g.kvHeads * w }, () => n()),
      w,
    })),
  );
  return sequences.map(({ tokens, start }) => {
    const make = (m: { A: Float64Array; b: Float64Array; w: number }) => {
      const out = new Float32Array(g.kvHeads * tokens * m.w);
      for (let t = 0; t < tokens; t++) {
        const z = Array.from({ length: RANK }, () => n());
        for (let f = 0; f < g.kvHeads * m.w; f++) {
          let x = m.b[f] + 0.05 * n();
          for (let k = 0; k < RANK; k++) x += z[k] * m.A[k * g.kvHeads * m.w + f];
          const h = Math.floor(f / m.w);
          out[(h * tokens + t) * m.w + (f % m.w)] = x;
        }
      }
      return out;
    };
    const rotate = (k: Float32Array) => {
      const D = g.headDim;
      const inv = invFreq(theta, D);
      for (let h = 0; h < g.kvHeads; h++)
        for (let t = 0; t < tokens; t++)
          for (let i = 0; i < D / 2; i++) {
            const at = (h * tokens + t) * D;
            const ang = (start + t) * inv[i];
            const [a, b] = [k[at + i], k[at + i + D / 2]];
            k[at + i] = a * Math.cos(ang) - b * Math.sin(ang);
            k[at + i + D / 2] = b * Math.cos(ang) + a * Math.sin(ang);
          }
      return k;
    };
    return {
      layers: g.layers,
      kvHeads: g.kvHeads,
      headDim: g.headDim,
      valueDim: g.valueDim,
      tokens,
      dtype: 'float32' as const,
      startPosition: start,
      keys: mix.map(([k]) => rotate(make(k))),
      values: mix.map(([, v]) => make(v)),
    };
  });
}

/** Writes a dump directory: model fields as given, files named by model layer `cacheLayers[l]`. */
function writeDump(dir: string, model: Record<string, unknown>, cacheLayers: number[], caches: KvCache[]): void {
  mkdirSync(dir, { recursive: true });
  caches.forEach((c, i) => {
    const tensors = new Map<string, TensorEntry>();
    cacheLayers.forEach((l, li) => {
      tensors.set(`present.${l}.key`, { dtype: 'F32', shape: [1, c.kvHeads, c.tokens, c.headDim], data: bytesOf(c.keys[li]) });
      tensors.set(`present.${l}.value`, { dtype: 'F32', shape: [1, c.kvHeads, c.tokens, c.valueDim!], data: bytesOf(c.values[li]) });
    });
    writeFileSync(join(dir, `seq-${String(i).padStart(6, '0')}.safetensors`), serializeSafetensors(tensors, {}));
  });
  const manifest = {
    format: 'kvtc-kv-dump',
    format_version: 1,
    producer: { name: 'make-python-fixtures', version: '1' },
    model,
    sequences: caches.map((c, i) => ({
      file: `seq-${String(i).padStart(6, '0')}.safetensors`,
      tokens: c.tokens,
      start_position: c.startPosition,
    })),
  };
  writeFileSync(join(dir, 'kvtc-dump.json'), JSON.stringify(manifest, null, 2) + '\n');
}
const SEQS = Array.from({ length: 10 }, (_, i) => ({ tokens: 256, start: 64 * i }));
const CAL_ARGS = [
  '--tokens',
  '1024',
  '--tuning-tokens',
  '512',
  '--report-tokens',
  '512',
  '--sink',
  '4',
  '--window',
  '16',
  '--grouping',
  'layer',
  '--quiet',
];
function copyProfile(from: string, name: string): void {
  rmSync(join(OUT, name), { recursive: true, force: true });
  mkdirSync(join(OUT, name), { recursive: true });
  for (const f of FILES) copyFileSync(join(OUT, from, f), join(OUT, name, f));
}
{
  // MLA-like: model layer 2 is a linear-attention layer (no cache); the latent's key is its RoPE part.
  const g = { layers: 3, kvHeads: 1, headDim: 8, valueDim: 24 };
  const [fixture, ...dump] = madeUpCaches(g, 3, 10000, [{ tokens: 96, start: 300 }, ...SEQS]);
  const rope = { theta: 10000, rotary_dim: 8, layout: 'half', inv_freq: invFreq(10000, 8) };
  const model = {
    name: 'made-up-mla',
    family: 'deepseek_v3',
    architecture: 'DeepseekV3ForCausalLM',
    layers: 4,
    heads: 16,
    kv_heads: 1,
    head_dim: 8,
    value_head_dim: 24,
    dtype: 'float32',
    max_positions: 4096,
    cache: 'mla-latent',
    layer_kinds: ['full_attention', 'full_attention', 'linear_attention', 'full_attention'],
    cache_layers: [0, 1, 3],
    rope: [rope, rope, null, rope],
  };
  writeDump(join(OUT, '_dump-mla'), model, [0, 1, 3], dump);
  kvtc('calibrate', '--kv', '_dump-mla', '--out', '_cal-mla', ...CAL_ARGS);
  copyProfile('_cal-mla', 'profile-v3-mla');
  writeFileSync(join(OUT, 'cache-v3-mla.safetensors'), serializeKvCache(fixture));
}
{
  // GQA, 4 KV heads of 16, 5 layers; --shards tp=2,pp=2 cuts it as vLLM would: rank tp 1 / pp 1 holds
  // model layers 3–4 (the second stage of 3 + 2) and KV heads 2–3.
  const g = { layers: 5, kvHeads: 4, headDim: 16, valueDim: 16 };
  const [whole, ...dump] = madeUpCaches(g, 4, 500000, [{ tokens: 96, start: 17 }, ...SEQS]);
  const rope = { theta: 500000, rotary_dim: 16, layout: 'half', inv_freq: invFreq(500000, 16) };
  const model = {
    name: 'made-up-gqa',
    family: 'llama',
    architecture: 'LlamaForCausalLM',
    layers: 5,
    heads: 8,
    kv_heads: 4,
    head_dim: 16,
    dtype: 'float32',
    max_positions: 4096,
    cache: 'gqa',
    layer_kinds: Array.from({ length: 5 }, () => 'full_attention'),
    cache_layers: [0, 1, 2, 3, 4],
    rope: Array.from({ length: 5 }, () => rope),
  };
  writeDump(join(OUT, '_dump-gqa'), model, [0, 1, 2, 3, 4], dump);
  kvtc('calibrate', '--kv', '_dump-gqa', '--shards', 'tp=2,pp=2', '--out', '_cal-gqa', ...CAL_ARGS);
  copyProfile(join('_cal-gqa', 'tp_1_pp_1'), 'profile-v3-shard');
  const T = whole.tokens;
  const heads = (a: Float32Array) => a.slice(2 * T * 16, 4 * T * 16); // heads 2 and 3, [kv_heads, tokens, head_dim]
  writeFileSync(
    join(OUT, 'cache-v3-shard.safetensors'),
    serializeKvCache({
      ...whole,
      layers: 2,
      kvHeads: 2,
      valueDim: undefined,
      keys: whole.keys.slice(3).map(heads),
      values: whole.values.slice(3).map(heads),
    }),
  );
}
for (const d of ['_dump-mla', '_cal-mla', '_dump-gqa', '_cal-gqa']) rmSync(join(OUT, d), { recursive: true, force: true });

for (const [blob, profile, kv] of CASES) {
  kvtc('encode', '--profile', profile, '--kv', kv, '--out', `${blob}.kvtc`);
  kvtc('decode', '--profile', profile, '--in', `${blob}.kvtc`, '--out', `${blob}.decoded.safetensors`);
}
console.log(`wrote ${OUT}`);

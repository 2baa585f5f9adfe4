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
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseKvCache, serializeKvCache } from '../src/model/kv-io.js';
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

for (const [blob, profile, kv] of CASES) {
  kvtc('encode', '--profile', profile, '--kv', kv, '--out', `${blob}.kvtc`);
  kvtc('decode', '--profile', profile, '--in', `${blob}.kvtc`, '--out', `${blob}.decoded.safetensors`);
}
console.log(`wrote ${OUT}`);

// Regenerates python/tests/fixtures/ (the pytest suite's committed inputs) with the Node CLI:
//   npx tsx scripts/make-python-fixtures.ts
// Copies the two profiles the suite reads (format 2: kvtc-profiles/stories260k; format 1:
// test/fixtures/profile-v1), captures 256 tokens of the bundled model, writes a float16 copy of
// that cache, and encodes and decodes each (profile, cache) case with `kvtc encode` / `kvtc decode`.
// The capture and the codec's projection run on ONNX Runtime, whose float results differ in the
// last bits between CPUs, so a rerun on another machine can change the cache, blobs and decodes
// slightly: the suite compares them with tolerances, never by hash.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseKvCache, serializeKvCache } from '../src/model/kv-io.js';

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

for (const [blob, profile, kv] of CASES) {
  kvtc('encode', '--profile', profile, '--kv', kv, '--out', `${blob}.kvtc`);
  kvtc('decode', '--profile', profile, '--in', `${blob}.kvtc`, '--out', `${blob}.decoded.safetensors`);
}
console.log(`wrote ${OUT}`);

// Compares the entropy coders on real payloads:  npx tsx scripts/entropy-compare.ts [profile] [model]
// Sizes are exact; times are medians of 9 runs in this process (noisy machines: compare ratios).
import { readFileSync } from 'node:fs';
import { deflateRawSync, constants as zc } from 'node:zlib';
import { gatherFeatures } from '../src/fit/features.js';
import { projectCoefficients } from '../test/fit/fit-reference.js';
import { encodePlanPayload, toStoredComponentMajor } from '../src/codec/payload.js';
import { loadModel } from '../src/model/load.js';
import { ModelRunner } from '../src/model/runner.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../src/paths.js';
import { ropeFromManifest } from '../src/profile/codec-from-profile.js';
import { readProfile } from '../src/profile/read.js';

const profile = await readProfile(process.argv[2] ?? `${DEFAULT_PROFILES_DIR}/stories260k`);
const model = await loadModel(process.argv[3] ?? DEFAULT_MODEL_DIR);
const runner = new ModelRunner(model);
const text = readFileSync(WIKITEXT_TEST, 'utf8');
const payloads: Uint8Array[] = [];
for (let k = 0; k < 4; k++) {
  const { cache } = await runner.capture(text.slice(k * 6000, k * 6000 + 20000), { maxTokens: 512 });
  const { sink, window } = profile.manifest.settings;
  for (const plan of profile.plans) {
    const X = gatherFeatures(
      cache,
      { kind: plan.kind, layers: plan.layers },
      ropeFromManifest(profile.manifest),
      sink,
      cache.tokens - window,
    );
    const n = cache.tokens - sink - window;
    payloads.push(encodePlanPayload(toStoredComponentMajor(projectCoefficients(X, plan.mean, plan.basis, plan.rank), n, plan), n, plan));
  }
}
const raw = payloads.reduce((a, p) => a + p.byteLength, 0);
const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1];
const coders: [string, Parameters<typeof deflateRawSync>[1]][] = [
  ['huffman-only (Z_HUFFMAN_ONLY)', { strategy: zc.Z_HUFFMAN_ONLY, level: 1 }],
  ['default (level 6)', { level: 6 }],
  ['best (level 9)', { level: 9 }],
  ['fast (level 1)', { level: 1 }],
  ['RLE (Z_RLE)', { strategy: zc.Z_RLE, level: 1 }],
];
console.log(`| coder | bytes | vs packed payload | deflate time (median of 9) |`);
console.log(`|---|---|---|---|`);
console.log(`| none (packed codes) | ${raw} | 1.000 | — |`);
for (const [name, o] of coders) {
  let bytes = 0;
  const times: number[] = [];
  for (let rep = 0; rep < 9; rep++) {
    const t = performance.now();
    bytes = 0;
    for (const p of payloads) bytes += deflateRawSync(p, o).byteLength;
    times.push(performance.now() - t);
  }
  console.log(`| ${name} | ${bytes} | ${(bytes / raw).toFixed(3)} | ${median(times).toFixed(2)} ms |`);
}

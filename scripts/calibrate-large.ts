// Calibration stage breakdown on a larger random-weight model (24 layers × 8 KV heads × 64):
//   npx tsx scripts/calibrate-large.ts
// Shows where calibration time goes when the model is big enough for its forward pass to matter.
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calibrate } from '../src/calibrate/calibrate.js';
import { buildRandomLlama } from '../src/convert/random-llama.js';
import { DEFAULT_CALIBRATION_DIR } from '../src/paths.js';

const dir = join(tmpdir(), 'kvtc-random-24x8x64');
if (!existsSync(dir))
  await buildRandomLlama({
    out: dir,
    layers: 24,
    hidden: 1024,
    heads: 16,
    kvHeads: 8,
    headDim: 64,
    intermediate: 2816,
    maxPositions: 4096,
    seed: 2,
  });
const r = await calibrate({
  modelDir: dir,
  data: [DEFAULT_CALIBRATION_DIR],
  ratios: [20],
  tokens: 16384,
  heldout: 4096,
  sink: 4,
  window: 128,
  grouping: 'layer',
  chunk: 256,
  seed: 0,
  device: 'cpu',
  out: join(tmpdir(), 'kvtc-random-24x8x64-profile'),
  force: true,
});
const s = r.seconds;
const wall = s.total;
console.log(
  `24 layers, hidden 1024, 16 query / 8 KV heads × 64 (p = 512 per basis, 48 bases); ${r.tokens} fit + ${r.heldout_tokens} held-out tokens`,
);
console.log('| stage | seconds | share of wall time |');
console.log('|---|---|---|');
for (const k of ['load', 'tokenize', 'forward', 'covariance', 'fit_wall', 'allocation', 'measure', 'write']) {
  if (s[k] !== undefined)
    console.log(
      `| ${k === 'fit_wall' ? 'eigen + error tables (2 worker threads, wall)' : k} | ${s[k].toFixed(1)} | ${((100 * s[k]) / wall).toFixed(0)}% |`,
    );
}
console.log(`| total | ${wall.toFixed(1)} | 100% |`);
console.log(
  `(CPU seconds inside the fit stage: eigen ${s.eigen.toFixed(1)}, error tables ${s.error_tables.toFixed(1)}); measured ${r.profiles[0].ratio_compressed.toFixed(2)}x on compressed tokens.`,
);

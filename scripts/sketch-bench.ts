// The streaming sketch (src/fit/sketch.ts) at one basis of real width, without a model:
//   npx tsx scripts/sketch-bench.ts P TOKENS [RATIO]
// Streams TOKENS synthetic features (a decaying spectrum: 256 directions with variances
// (j+1)^-1.5 plus white noise, around a non-zero mean) of P features through the sketch sized as
// calibrate sizes it for RATIO (default 20), then runs the Nyström step, and prints the stream's
// and the step's seconds and the variance the fitted components capture. P = 32768 is one
// all-layer basis of Llama 3.1 8B's geometry (32 layers × 8 KV heads × 128); 8192 one of 8 layers.
import { maxRankForRatios } from '../src/fit/fit.js';
import { createSketchAccumulator, nystromEigenAsync, sketchShape } from '../src/fit/sketch.js';
import { mulberry32 } from '../src/random.js';

const p = Number(process.argv[2] ?? 8192);
const tokens = Number(process.argv[3] ?? 4096);
const ratio = Number(process.argv[4] ?? 20);
const shape = sketchShape(p, maxRankForRatios(p, [ratio]));
const D = 256;
const u = mulberry32(1);
const normal = () => Math.sqrt(-2 * Math.log(Math.max(u(), 1e-300))) * Math.cos(2 * Math.PI * u());
const G = new Float32Array(D * p);
for (let j = 0; j < D; j++) {
  const s = Math.sqrt((j + 1) ** -1.5 / p) * 10;
  for (let i = 0; i < p; i++) G[j * p + i] = s * normal();
}
const acc = await createSketchAccumulator(p, shape.columns);
const chunk = 1024;
const X = new Float32Array(chunk * p);
let streamSeconds = 0;
for (let t0 = 0; t0 < tokens; t0 += chunk) {
  const n = Math.min(chunk, tokens - t0);
  for (let t = 0; t < n; t++) {
    const row = X.subarray(t * p, (t + 1) * p);
    for (let i = 0; i < p; i++) row[i] = 1 + 0.01 * normal();
    for (let j = 0; j < D; j++) {
      const z = normal();
      const g = G.subarray(j * p, (j + 1) * p);
      for (let i = 0; i < p; i++) row[i] += z * g[i];
    }
  }
  const t = performance.now();
  await acc.add(X, n);
  streamSeconds += (performance.now() - t) / 1000;
}
await acc.kernel.dispose?.();
let t = performance.now();
const sk = acc.finish();
const finishSeconds = (performance.now() - t) / 1000;
t = performance.now();
const e = await nystromEigenAsync(sk, shape.rank);
const nystromSeconds = (performance.now() - t) / 1000;
const total = e.values.reduce((a, v) => a + v, 0);
console.log(
  JSON.stringify({
    p,
    tokens,
    ratio,
    columns: shape.columns,
    rank: shape.rank,
    kept: e.values.length,
    stream_seconds: +streamSeconds.toFixed(1),
    stream_ms_per_token: +((1000 * streamSeconds) / tokens).toFixed(2),
    finish_seconds: +finishSeconds.toFixed(1),
    nystrom_seconds: +nystromSeconds.toFixed(1),
    top_values: Array.from(e.values.slice(0, 4), (v) => +v.toPrecision(4)),
    sum_values: +total.toPrecision(4),
  }),
);

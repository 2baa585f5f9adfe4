// The ratio/error table of docs/dynamo.md:  npx tsx scripts/dynamo-compare.ts [--quick]
//
// On the bundled stories260K and the same held-out text (same seeded split of 512-token
// sequences), for each target ratio:
//   - kvtc's own codec, default protection (sink 4 + window 128 raw; errors over the rest),
//   - kvtc's own codec with sink 0 / window 0 (every token compressed, as Dynamo does),
//   - the Dynamo variant (`calibrate --target dynamo`) at 16-token blocks (and 4 and 32), FP8 cast
//     of SM89+ GPUs, run through the emulated kernels,
//   - the same fitted for the pre-SM89 software cast (sm80), and the SM89 profile run on sm80.
// Every number is measured on held-out sequences the fits never saw.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calibrate } from '../src/calibrate/calibrate.js';
import { calibrateDynamo, selectSequences, sequenceLength } from '../src/dynamo/calibrate-dynamo.js';
import { measureDynamo, setupFromProfile } from '../src/dynamo/dynamo-codec.js';
import { readDynamoProfile } from '../src/dynamo/profile.js';
import { loadModel } from '../src/model/load.js';
import { ModelRunner } from '../src/model/runner.js';
import type { KvCache } from '../src/model/types.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../src/paths.js';

const quick = process.argv.includes('--quick');
const tmp = mkdtempSync(join(tmpdir(), 'kvtc-dynamo-compare-'));
const ratios = quick ? [8, 20] : [4, 8, 16, 20];
const tokens = quick ? 4096 : 16384;
const heldout = quick ? 1024 : 4096;
const base = {
  modelDir: DEFAULT_MODEL_DIR,
  data: [DEFAULT_CALIBRATION_DIR],
  ratios,
  tokens,
  heldout,
  chunk: 256,
  seed: 0,
  device: 'cpu' as const,
  force: true,
};
const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
const f = (x: number, d = 3) => x.toFixed(d);

interface Row {
  codec: string;
  target: number;
  ratio: number;
  ratioAll: number;
  k: number;
  v: number;
  tokens: string;
}
const rows: Row[] = [];
const t0 = performance.now();

for (const [name, sink, window] of [
  ['kvtc (sink 4, window 128)', 4, 128],
  ['kvtc (sink 0, window 0)', 0, 0],
] as const) {
  const r = await calibrate({ ...base, sink, window, grouping: 'layer', out: join(tmp, `kvtc-${sink}`) });
  for (const p of r.profiles) {
    rows.push({
      codec: name,
      target: p.ratio_target,
      ratio: p.ratio_compressed,
      ratioAll: p.ratio_blob,
      k: p.rel_error.key,
      v: p.rel_error.value,
      tokens: sink ? `${sink}..${512 - window} of 512` : 'all 512',
    });
  }
}

async function heldoutCaches(B: number): Promise<KvCache[]> {
  const model = await loadModel(DEFAULT_MODEL_DIR);
  try {
    const { split } = await selectSequences(model.tokenizer, base.data, {
      seqLen: sequenceLength(model.spec.maxPositions, B),
      tokens,
      heldout,
      seed: 0,
      blockTokens: B,
    });
    const runner = new ModelRunner(model);
    const out: KvCache[] = [];
    for (const ids of split.heldout) out.push((await runner.prefill(ids, { chunk: 256 })).cache);
    return out;
  } finally {
    await model.session.release();
  }
}

for (const B of quick ? [16] : [4, 16, 32]) {
  // 32-token blocks have 1024 features: fit on as many blocks as that (32768 tokens) when the data allows
  const fitTokens = B === 32 && !quick ? 32768 : tokens;
  for (const fp8Path of B === 16 ? (['sm89', 'sm80'] as const) : (['sm89'] as const)) {
    const r = await calibrateDynamo({ ...base, tokens: fitTokens, blockTokens: B, fp8Path, out: join(tmp, `dynamo-${B}-${fp8Path}`) });
    for (const w of r.warnings) console.error(`warning (B = ${B}): ${w}`);
    for (const p of r.profiles) {
      rows.push({
        codec: `Dynamo kernels, ${B}-token blocks, ${fp8Path} cast${fitTokens !== tokens ? ` (${r.tokens} fit tokens)` : ''}`,
        target: p.ratio_target,
        ratio: p.ratio_rows,
        ratioAll: p.ratio_calls,
        k: p.rel_error.key,
        v: p.rel_error.value,
        tokens: 'all 512',
      });
    }
    if (B === 16 && fp8Path === 'sm89') {
      const held = await heldoutCaches(B);
      for (const p of r.profiles) {
        const setup = { ...setupFromProfile(await readDynamoProfile(p.profile)), fp8Path: 'sm80' as const };
        const m = measureDynamo(setup, held);
        rows.push({
          codec: 'Dynamo kernels, 16-token blocks, sm89 profile run on an sm80 GPU',
          target: p.ratio_target,
          ratio: m.ratioRows,
          ratioAll: m.ratioCalls,
          k: mean(m.relKey),
          v: mean(m.relValue),
          tokens: 'all 512',
        });
      }
    }
  }
}

console.log(`stories260K (5 layers, 4 KV heads × 8), ${tokens} fit tokens, ${heldout} held-out tokens in 512-token sequences, seed 0.`);
console.log(
  'ratio: fp16 bytes / stored bytes of the compressed tokens (kvtc: whole blob minus the raw sink/window section; Dynamo: codes + per-row IntX min/max).',
);
console.log(
  'ratio incl. overhead: kvtc whole blob (raw sink/window included); Dynamo with the 40-byte range headers of one kvtc_compress call per layer and K/V per 512-token sequence.',
);
console.log('rel err: ‖x̂−x‖/‖x‖ over the compressed tokens, mean over layers.\n');
for (const target of ratios) {
  console.log(`\n#### ${target}x\n`);
  console.log('| codec | ratio | ratio incl. overhead | rel err K | rel err V | tokens compressed |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows.filter((x) => x.target === target))
    console.log(`| ${r.codec} | ${f(r.ratio, 2)}x | ${f(r.ratioAll, 2)}x | ${f(r.k)} | ${f(r.v)} | ${r.tokens} |`);
}
console.log(`\n(${((performance.now() - t0) / 1000).toFixed(0)} s on this machine)`);

// Produces the ratio/error tables of docs/codec.md:  npx tsx scripts/codec-report.ts
// Every number is measured on the report split (text neither the fit nor the tuning saw).
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calibrate, type CalibrateResult } from '../src/calibrate/calibrate.js';
import { buildRandomLlama } from '../src/convert/random-llama.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../src/paths.js';

const tmp = mkdtempSync(join(tmpdir(), 'kvtc-report-'));
const f = (x: number, d = 2) => x.toFixed(d);

async function run(
  modelDir: string,
  name: string,
  ratios: number[],
  extra: Partial<Parameters<typeof calibrate>[0]> = {},
): Promise<CalibrateResult> {
  return calibrate({
    modelDir,
    data: [DEFAULT_CALIBRATION_DIR],
    ratios,
    tokens: 16384,
    heldout: 4096,
    sink: 4,
    window: 128,
    grouping: 'layer',
    chunk: 256,
    seed: 0,
    device: 'cpu',
    out: join(tmp, name),
    force: true,
    ...extra,
  });
}

function table(title: string, r: CalibrateResult): void {
  console.log(`\n### ${title}\n`);
  console.log(
    `${r.tokens} fit tokens, ${r.heldout_tokens} tuning tokens, ${r.report_tokens} report tokens in ${r.seq_len}-token contexts; sink 4, window 128; grouping ${r.profiles.map((p) => p.grouping).join('/')}. K and V: mean over layers [95% interval].\n`,
  );
  const layers = r.profiles[0].rel_error.key_per_layer.length;
  console.log(
    `| target | ratio, compressed tokens | ratio, whole blob (context ${r.profiles[0].context_tokens.toFixed(0)}) | bits/token | K | V | ${Array.from({ length: layers }, (_, l) => `K${l}`).join(' | ')} | ${Array.from({ length: layers }, (_, l) => `V${l}`).join(' | ')} |`,
  );
  console.log(`|---|---|---|---|---|---|${'---|'.repeat(2 * layers)}`);
  const ci = (x: number, c?: [number, number]) => (c ? `${f(x, 3)} [${f(c[0], 3)}, ${f(c[1], 3)}]` : f(x, 3));
  for (const p of r.profiles) {
    console.log(
      `| ${p.ratio_target}x | ${f(p.ratio_compressed)}x | ${f(p.ratio_blob)}x | ${p.bits_per_token} | ${ci(p.rel_error.key, p.rel_error.key_ci95)} | ${ci(p.rel_error.value, p.rel_error.value_ci95)} | ${p.rel_error.key_per_layer.map((x) => f(x, 3)).join(' | ')} | ${p.rel_error.value_per_layer.map((x) => f(x, 3)).join(' | ')} |`,
    );
  }
  const s = r.seconds;
  console.log(
    `\nTime: ${f(s.total, 1)} s (forward ${f(s.forward ?? 0, 1)}, covariance ${f(s.covariance ?? 0, 1)}, eigen ${f(s.eigen ?? 0, 1)}, error tables ${f(s.error_tables ?? 0, 1)} (eigen + tables on 2 worker threads: ${f(s.fit_wall ?? 0, 1)} s wall), allocation ${f(s.allocation ?? 0, 1)}, measure ${f(s.measure ?? 0, 1)}).`,
  );
}

const ratios = [4, 8, 16, 20];
table('stories260K (bundled; 5 layers, 4 KV heads × 8, p = 32 per layer)', await run(DEFAULT_MODEL_DIR, 'stories', ratios));
table(
  'stories260K, one basis over all 5 layers (p = 160, as the paper)',
  await run(DEFAULT_MODEL_DIR, 'stories-all', [8, 16, 20], { grouping: 'all' }),
);

const rnd = join(tmpdir(), 'kvtc-random-4x8x64');
if (!existsSync(rnd))
  await buildRandomLlama({
    out: rnd,
    layers: 4,
    hidden: 512,
    heads: 8,
    kvHeads: 8,
    headDim: 64,
    intermediate: 1024,
    maxPositions: 2048,
    seed: 1,
  });
table(
  'random-weight Llama with real-model head shape (4 layers, 8 KV heads × 64, p = 512 per layer)',
  await run(rnd, 'random', [8, 16, 20], { tokens: 8192, heldout: 2048 }),
);
rmSync(tmp, { recursive: true, force: true });

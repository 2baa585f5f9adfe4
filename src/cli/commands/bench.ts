import { z } from 'zod';
import { benchCacheInfo, clearBenchCache } from '../../bench/bench-cache.js';
import { runBench, type BenchResult, type ModelBench } from '../../bench/run.js';
import type { Summary } from '../../bench/stats.js';
import { DEFAULT_MODEL_OPTION, modelDirFromOption } from '../../model/load.js';
import { parseOptions } from '../../validation.js';
import { fmtBytes, fmtSeconds, table } from '../format.js';
import type { CliIO } from '../io.js';
import { createProgress } from '../progress.js';
import { printJson } from '../json.js';
import { wholeNumber, deviceSchema } from '../options.js';

const Options = z.object({
  model: z.string().optional(),
  onnx: z.string().min(1).optional(),
  profile: z.string().optional(),
  tokens: wholeNumber(16),
  repeats: wholeNumber(1, 1000),
  contexts: z
    .string()
    .transform((s) =>
      s
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean)
        .map(Number),
    )
    .refine((a) => a.length > 0 && a.every((x) => Number.isInteger(x) && x >= 16), 'must be a comma-separated list of whole numbers >= 16'),
  quick: z.boolean().default(false),
  clearCache: z.boolean().default(false),
  dynamoProfile: z.string().min(1).optional(),
  device: deviceSchema,
  json: z.boolean().default(false),
  quiet: z.boolean().default(false),
});

const span = (s: Summary, f = fmtSeconds) => `${f(s.median)} (${f(s.min)}–${f(s.max)})`;

export function printBench(r: BenchResult, io: CliIO): void {
  const m = r.machine;
  io.out(
    `kvtc bench — ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}, Node ${m.node}, ${m.onnxruntime}; load average ${m.loadavg.join(' ')}`,
  );
  io.out(
    `Medians over ${r.settings.repeats} runs (recompute: ${r.settings.recomputeRepeats}), with (min–max). MB/s = fp16 bytes of the KV cache per second (10^6 B). GPU: ${r.gpu}.`,
  );
  for (const b of r.models) printModel(b, io);
  if (r.calibration) {
    const c = r.calibration;
    // calibrate() reports eigen and error_tables as CPU seconds summed over bases fitted in parallel;
    // their wall time is fit_wall. Shares are of the wall-clock total.
    const cpuOnly = new Set(['eigen', 'error_tables']);
    const total = c.seconds.total ?? Object.entries(c.seconds).reduce((a, [k, v]) => (k === 'total' || cpuOnly.has(k) ? a : a + v), 0);
    io.out('');
    io.out(
      `Calibration time by stage — ${c.model}, ${c.tokens} fit + ${c.heldoutTokens} held-out tokens, ratio 20 (${c.reused ? `ran ${c.at}; profile reused from the bench cache` : 'ran in this bench'}):`,
    );
    const rows = Object.entries(c.seconds)
      .filter(([k]) => k !== 'total')
      .map(([k, v]) =>
        cpuOnly.has(k) ? [`  ${k} (CPU s, within fit_wall)`, v.toFixed(2), ''] : [k, v.toFixed(2), `${((100 * v) / total).toFixed(0)}%`],
      );
    io.out(table(['stage', 'seconds', 'share of wall'], [...rows, ['total (wall)', total.toFixed(2), '100%']]));
  }
  io.out('');
  io.out(`bench took ${fmtSeconds(r.seconds)}.`);
}

function printModel(b: ModelBench, io: CliIO): void {
  const s = b.shape;
  io.out('');
  io.out(
    `## ${b.name}: ${s.layers} layers, ${s.heads} query / ${s.kvHeads} KV heads × ${s.headDim}, ${s.kvDtype} KV — cache of ${b.tokens} tokens = ${fmtBytes(b.fp16Bytes)} as fp16`,
  );
  io.out(`profile ${b.profile}`);
  io.out('');
  io.out(
    table(
      ['operation', 'time', 'MB/s', 'what it measures'],
      b.throughput.map((t) => [t.name, span(t.seconds), t.mbps.toFixed(0), t.what]),
    ),
  );
  io.out('');
  const stages = (x: Record<string, Summary>) =>
    Object.entries(x)
      .map(([k, v]) => `${k} ${fmtSeconds(v.median)}`)
      .join(', ');
  io.out(`encode stages (1 thread, medians): ${stages(b.encodeStages)}`);
  io.out(`decode stages (1 thread, medians): ${stages(b.decodeStages)}`);
  io.out(
    '  (transform = the ONNX graphs: projection, and the (de)quantization of static int groups; quantize / dequantize = host bit-packing and the dynamic and fp8 groups)',
  );
  const d = b.decodeStages;
  if (d.inflate) {
    const other = (d.dequantize?.median ?? 0) + (d.transform?.median ?? 0) + (d.scatter?.median ?? 0);
    io.out(
      `  decode stages other than inflate: ${fmtSeconds(other)} = ${(other / d.inflate.median).toFixed(1)}x inflate (${fmtSeconds(d.inflate.median)})`,
    );
    const w = b.decodeWork;
    if (d.transform && w.gflop > 0) {
      const gflops = w.gflop / d.transform.median;
      const work = w.gflop >= 0.1 ? `${w.gflop.toFixed(2)} GFLOP` : `${(w.gflop * 1e3).toFixed(1)} MFLOP`;
      io.out(
        `  inflate reads the ${fmtBytes(w.blobBytes)} blob; the other stages write the ${fmtBytes(w.outputBytes)} float32 cache, and the reconstruction's matrix product alone is ${work} (transform: ${gflops.toFixed(gflops < 10 ? 1 : 0)} GFLOP/s on one thread)`,
      );
    }
  }
  io.out('');
  io.out(
    `Ratio and error on the same cache (every codec keeps the first ${b.protection.sink} and last ${b.protection.window} tokens in fp16; ratio = fp16 bytes / stored bytes, kvtc counts its whole blob; rel err = ‖x̂−x‖/‖x‖ over all tokens):`,
  );
  if (b.codecs.some((c) => c.name === 'dynamo'))
    io.out(
      "  (dynamo: NVIDIA Dynamo's KVTC kernels, emulated exactly on the CPU; they keep no sink or window and compress every full block, keys with RoPE; docs/dynamo.md)",
    );
  io.out(
    table(
      ['codec', 'bytes', 'ratio', 'rel err K', 'rel err V'],
      b.codecs.map((c) => [
        c.name,
        fmtBytes(c.bytes),
        `${c.ratio.toFixed(2)}x`,
        c.relError.key.toExponential(2),
        c.relError.value.toExponential(2),
      ]),
    ),
  );
  const k = b.codecs.find((c) => c.name === 'kvtc');
  if (k?.ratioCompressed)
    io.out(`kvtc over its compressed tokens only (sink/window tokens and their bytes left out): ${k.ratioCompressed.toFixed(2)}x`);
  io.out('');
  io.out(
    `Restore vs recompute (restore = KvtcCodec.decode of the blob to a full KvCache, graphs on a worker thread; recompute = chunked prefill, chunk ${b.chunk}, of the same tokens):`,
  );
  io.out(
    table(
      ['context', 'fp16 KV', 'blob', 'recompute', 'restore', 'speedup'],
      b.restore.map((x) => [
        x.context,
        fmtBytes(x.fp16Bytes),
        fmtBytes(x.blobBytes),
        span(x.recompute),
        span(x.restore),
        `${x.speedup.toFixed(1)}x`,
      ]),
    ),
  );
}

export default async function bench(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  if (opts.clearCache) {
    const c = await clearBenchCache();
    const result = { cache_dir: c.dir, removed: c.entries, bytes_freed: c.bytes };
    if (opts.json) return void printJson(io, result);
    io.out(
      c.entries.length
        ? `removed ${c.entries.join(', ')} from ${c.dir} (${fmtBytes(c.bytes)} freed)`
        : `the bench cache ${c.dir} holds nothing kvtc made: nothing to remove`,
    );
    return;
  }
  const progress = createProgress(io, { quiet: opts.quiet });
  let result: BenchResult;
  try {
    result = await runBench({
      modelDir:
        (opts.model === undefined || opts.model === DEFAULT_MODEL_OPTION) && opts.onnx === undefined
          ? undefined
          : modelDirFromOption(opts.model, opts.onnx),
      profile: opts.profile,
      tokens: opts.quick ? Math.min(opts.tokens, 512) : opts.tokens,
      repeats: opts.quick ? Math.min(opts.repeats, 2) : opts.repeats,
      contexts: opts.quick ? [256, 512] : opts.contexts,
      quick: opts.quick,
      device: opts.device,
      dynamoProfile: opts.dynamoProfile,
      onProgress: progress.fn,
    });
  } finally {
    progress.stop();
  }
  const cache = await benchCacheInfo();
  if (opts.json) return void printJson(io, { ...result, cache: { dir: cache.dir, entries: cache.entries, bytes: cache.bytes } });
  printBench(result, io);
  if (cache.entries.length)
    io.out(
      `\nbench cache: ${cache.dir} holds ${fmtBytes(cache.bytes)} of built models and profiles, reused by the next run; \`kvtc bench --clear-cache\` removes them.`,
    );
}
// Tested by test/bench/bench.test.ts (--quick --json), test/bench/bench-cache.test.ts (--clear-cache), test/cli/safety.test.ts and test/cli/dynamo-profile-mismatch.test.ts (another model's profile) and test/cli/program.test.ts (option errors).

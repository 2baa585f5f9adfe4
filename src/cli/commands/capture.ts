import { resolve } from 'node:path';
import { z } from 'zod';
import { checkOutputFile } from '../../io/output.js';
import { PRE_ROPE } from '../../model/kv-io.js';
import type { KvCache } from '../../model/types.js';
import { ropeSafeChunk } from '../../rope/freqs.js';
import { layerTables } from '../../rope/rope-table.js';
import { checkModelRope } from '../../rope/data-check.js';
import type { ModelRope } from '../../rope/types.js';
import { readTextFile } from '../../io/text.js';
import { writeKvCache } from '../../model/kv-io.js';
import { loadModel, modelDirFromOption } from '../../model/load.js';
import { ModelRunner } from '../../model/runner.js';
import { checkDevice } from '../../onnx/session.js';
import { parseOptions } from '../../validation.js';
import type { CliIO } from '../io.js';
import { createProgress } from '../progress.js';
import { printJson } from '../json.js';
import { wholeNumber, deviceSchema } from '../options.js';

const schema = z.object({
  model: z.string().min(1),
  onnx: z.string().min(1).optional(),
  text: z.string().min(1),
  out: z.string().min(1),
  maxTokens: wholeNumber(1).optional(),
  chunk: wholeNumber(1),
  device: deviceSchema,
  force: z.boolean(),
  preRope: z.boolean().default(false),
  json: z.boolean(),
  quiet: z.boolean().default(false),
});

export interface CaptureSummary {
  model: string;
  fingerprint: string;
  out: string;
  tokens: number;
  layers: number;
  kvHeads: number;
  headDim: number;
  dtype: string;
  bytes: number;
  seconds: number;
  tokensPerSecond: number;
}

/**
 * keys[l] [kvHeads, tokens, headDim] with layer l's RoPE undone at each token's position (cos/sin
 * and the attention factor; layers without RoPE as they are); values as they are.
 */
export function undoRopeOnKeys(cache: KvCache, rope: ModelRope): KvCache {
  const tables = layerTables(rope, cache.headDim, cache.startPosition + cache.tokens);
  const D = cache.headDim;
  const keys = cache.keys.map((k, l) => {
    const out = k.slice();
    const table = tables[l];
    if (!table) return out;
    for (let t = 0; t < cache.tokens; t++) {
      table.at(cache.startPosition + t);
      for (let h = 0; h < cache.kvHeads; h++) table.rotate(out, (h * cache.tokens + t) * D, out, (h * cache.tokens + t) * D, -1);
    }
    return out;
  });
  return { ...cache, keys, dtype: 'float32' };
}

export default async function capture(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(schema, raw);
  checkDevice(opts.device);
  const out = resolve(opts.out);
  // Checked before the model runs so a refused overwrite costs nothing.
  checkOutputFile(out, { force: opts.force });
  const { text } = await readTextFile(opts.text);
  const model = await loadModel(modelDirFromOption(opts.model, opts.onnx), { device: opts.device });
  const progress = createProgress(io, { quiet: opts.quiet });
  let r;
  try {
    // longrope: one forward pass, so every key has the factor set of the whole cache (src/rope/freqs.ts)
    const chunk = ropeSafeChunk(model.spec.rope, opts.chunk);
    if (chunk !== opts.chunk)
      model.notes.push(
        `longrope model: the text is prefilled in one pass (not --chunk ${opts.chunk}) so that every key is rotated with one factor set`,
      );
    r = await new ModelRunner(model).capture(text, { maxTokens: opts.maxTokens, chunk, onProgress: progress.fn });
  } finally {
    progress.stop();
    await model.session.release();
  }
  // The RoPE kvtc read from the config must fit the captured keys (ROPE_MISMATCH otherwise).
  const ropeCheck = checkModelRope(r.cache, r.ids, model.spec.rope);
  // --pre-rope: the keys as the codec sees them (RoPE undone, float32), to check kvtc's reading
  // of the model against one's own framework; marked so that encode refuses them.
  const cache = opts.preRope ? undoRopeOnKeys(r.cache, model.spec.rope) : r.cache;
  const bytes = await writeKvCache(out, cache, {
    model: model.name,
    fingerprint: model.fingerprint.id,
    ...(opts.preRope ? { extra: { keys: PRE_ROPE } } : {}),
  });
  const seconds = r.ms / 1000;
  const s: CaptureSummary = {
    model: model.name,
    fingerprint: model.fingerprint.id,
    out,
    tokens: r.cache.tokens,
    layers: r.cache.layers,
    kvHeads: r.cache.kvHeads,
    headDim: r.cache.headDim,
    dtype: r.cache.dtype,
    bytes,
    seconds,
    tokensPerSecond: r.cache.tokens / seconds,
  };
  if (opts.json) {
    printJson(io, s);
    return;
  }
  io.out(
    `Captured ${s.tokens} tokens of KV from ${s.model} (${s.layers} layers × ${s.kvHeads} KV heads × head_dim ${s.headDim}, ${s.dtype})`,
  );
  io.out(`  prefill ${s.seconds.toFixed(2)} s, ${s.tokensPerSecond.toFixed(0)} tokens/s (chunk ${opts.chunk}, ${opts.device})`);
  io.out(
    `Wrote ${s.out} (${s.bytes.toLocaleString('en-US')} bytes)${opts.preRope ? ', keys with RoPE undone (float32; for inspection, not for kvtc encode)' : ''}`,
  );
  for (const n of model.notes) io.out(`  note: ${n}`);
  if (!ropeCheck.checked) io.out(`  note: RoPE check against the keys skipped: ${ropeCheck.reason}`);
}
// Tested by test/model/cli.test.ts and test/cli/capture-pre-rope.test.ts.

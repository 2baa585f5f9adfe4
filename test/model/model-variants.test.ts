/**
 * Model directories as exports ship them, run through real ONNX Runtime sessions (CPU):
 * an Optimum merged decoder (decoder_model_merged.onnx with use_cache_branch), 4-bit
 * MatMulNBits weights (block 32, with and without zero points) and int8 DynamicQuantizeLinear +
 * MatMulInteger weights, each made from the bundled stories260K graph by test/model/graph-variants.ts.
 *
 * Tolerances, stated: a MatMulNBits graph must equal the float graph built from its dequantized
 * weights to 1e-4 of the largest logit (same arithmetic up to float summation order: this checks
 * that kvtc runs the quantized operator with its documented semantics), and stay near the float
 * model: logits within 15% relative RMS and the same top-1 token at >= 85% of positions
 * (measured here: about 11% and 45/48 for q4, 9% and 43/48 for int8). The merged decoder runs the
 * same operators as model.onnx, so its logits and cache equal model.onnx's to 1e-5.
 */
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { mergeDecoder, quantizeBlocks4, quantizeMatMulInt8, quantizeMatMulNBits } from './graph-variants.js';
import { tempDir } from './helpers.js';

const { onnx } = onnxProto;

const TEXT =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball.';

/** A copy of stories260K with the given graphs in onnx/ (the float one dropped unless listed). */
function variantDir(name: string, graphs: Record<string, Uint8Array>): string {
  const d = join(tempDir('kvtc-variants-'), name);
  cpSync(DEFAULT_MODEL_DIR, d, { recursive: true });
  rmSync(join(d, 'onnx'), { recursive: true });
  mkdirSync(join(d, 'onnx'));
  for (const [f, b] of Object.entries(graphs)) writeFileSync(join(d, 'onnx', f), b);
  return d;
}

/** The float graph with each MatMulNBits weight replaced by its dequantized float weight: the reference the quantized graph must equal. */
function dequantizedReference(floatGraph: Uint8Array, symmetric: boolean): Uint8Array {
  const m = onnx.ModelProto.decode(floatGraph);
  const mm = new Set((m.graph!.node ?? []).filter((n) => n.opType === 'MatMul').map((n) => n.input![1]));
  for (const t of m.graph!.initializer ?? []) {
    if (!mm.has(t.name!) || (t.dims ?? []).length !== 2 || t.dataType !== onnx.TensorProto.DataType.FLOAT) continue;
    const raw = Uint8Array.from(t.rawData!);
    const [K, N] = t.dims!.map(Number);
    t.rawData = new Uint8Array(quantizeBlocks4(new Float32Array(raw.buffer), K, N, 32, symmetric).dequant.buffer);
  }
  return onnx.ModelProto.encode(m).finish();
}

function logitStats(ref: Float32Array, x: Float32Array, vocab: number) {
  expect(x.length).toBe(ref.length);
  let num = 0;
  let den = 0;
  let maxAbs = 0;
  let maxRef = 0;
  let agree = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (ref[i] - x[i]) ** 2;
    den += ref[i] ** 2;
    maxAbs = Math.max(maxAbs, Math.abs(ref[i] - x[i]));
    maxRef = Math.max(maxRef, Math.abs(ref[i]));
  }
  const rows = ref.length / vocab;
  for (let t = 0; t < rows; t++) {
    let a = 0;
    let b = 0;
    for (let v = 1; v < vocab; v++) {
      if (ref[t * vocab + v] > ref[t * vocab + a]) a = v;
      if (x[t * vocab + v] > x[t * vocab + b]) b = v;
    }
    if (a === b) agree++;
  }
  return { relRms: Math.sqrt(num / den), maxAbs, maxRef, agree: agree / rows, rows };
}

function cacheDiff(a: KvCache, b: KvCache): number {
  expect(b.tokens).toBe(a.tokens);
  let m = 0;
  for (let l = 0; l < a.layers; l++) {
    for (const [x, y] of [
      [a.keys[l], b.keys[l]],
      [a.values[l], b.values[l]],
    ])
      for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i] - y[i]));
  }
  return m;
}

const floatGraph = readFileSync(join(DEFAULT_MODEL_DIR, 'onnx', 'model.onnx'));
let float: LoadedModel;
let ids: number[];
let floatLogits: Float32Array;

beforeAll(async () => {
  float = await loadModel(DEFAULT_MODEL_DIR);
  ids = float.tokenizer.encode(TEXT);
  floatLogits = (await new ModelRunner(float).forward(ids, null)).logits;
});

describe('Optimum merged decoder (decoder_model_merged.onnx, use_cache_branch)', () => {
  let dir: string;
  let merged: LoadedModel;
  const branch: number[] = [];
  beforeAll(async () => {
    dir = variantDir('stories-merged', {
      'decoder_model_merged.onnx': mergeDecoder(floatGraph),
      'decoder_with_past_model.onnx': floatGraph,
    });
    merged = await loadModel(dir);
    // Records what the runner feeds, then runs the real session.
    const session = merged.session;
    const run = session.run.bind(session);
    (session as { run: typeof session.run }).run = ((feeds: Record<string, { data: Uint8Array }>, ...rest: unknown[]) => {
      branch.push(feeds.use_cache_branch.data[0]);
      return (run as (...a: unknown[]) => ReturnType<typeof session.run>)(feeds, ...rest);
    }) as typeof session.run;
  });

  it('is chosen over the with-past half and said to be a merged decoder', () => {
    expect(merged.files.onnx).toBe(join(dir, 'onnx', 'decoder_model_merged.onnx'));
    expect(merged.io.useCacheBranch).toBe('use_cache_branch');
    expect(merged.notes).toContain(
      'onnx/decoder_model_merged.onnx is an Optimum merged decoder: kvtc feeds use_cache_branch false on the first pass (no past) and true once there is a past',
    );
    expect(merged.spec).toMatchObject({ layers: 5, kvHeads: 4, headDim: 8, kvDtype: 'float32' });
  });

  it('use_cache_branch is false for the prefill with no past and true for every pass extending one; logits and cache equal model.onnx', async () => {
    const runner = new ModelRunner(merged);
    branch.length = 0;
    const all = await runner.forward(ids, null);
    expect(branch).toEqual([0]);
    const s = logitStats(floatLogits, all.logits, merged.spec.vocabSize);
    expect(s.maxAbs).toBeLessThanOrEqual(1e-5 * s.maxRef);
    // chunked: the first chunk without past, the rest with it; the no-past branch would drop the past from present.
    // (The runner first probes once whether the graph extends a past by several tokens: a pass without past, one with.)
    branch.length = 0;
    expect(await runner.multiTokenWithPast()).toBe(true);
    expect(branch).toEqual([0, 1]);
    branch.length = 0;
    const chunked = await runner.prefill(ids, { chunk: 16 });
    expect(branch).toEqual([0, ...Array(Math.ceil(ids.length / 16) - 1).fill(1)]);
    expect(chunked.cache.tokens).toBe(ids.length);
    expect(cacheDiff(all.present, chunked.cache)).toBeLessThan(1e-5);
    const ref = await new ModelRunner(float).capture(ids);
    expect(cacheDiff(ref.cache, chunked.cache)).toBeLessThan(1e-5);
  });

  it('generates what model.onnx generates', async () => {
    const prompt = float.tokenizer.encode('Once upon a time');
    const a = await new ModelRunner(float).generate(prompt, { maxNewTokens: 24 });
    branch.length = 0;
    const b = await new ModelRunner(merged).generate(prompt, { maxNewTokens: 24 });
    expect(b.ids).toEqual(a.ids);
    expect(float.tokenizer.decode(b.ids)).toMatch(/^, there was a little girl named Lily/);
    expect(branch[0]).toBe(0);
    expect(branch.slice(1).every((x) => x === 1)).toBe(true);
  });
});

describe('weight-quantized graphs on the CPU provider', () => {
  it('MatMulNBits (4 bits, block 32, zero points): loads, says so, equals its dequantized float graph and stays near the float model', async () => {
    const q = quantizeMatMulNBits(floatGraph, { blockSize: 32 });
    expect(q.rewritten).toBe(5 * 7); // q, k, v, o, gate, up, down per layer; the tied lm_head is a Transpose of the embedding
    const dir = variantDir('stories-q4', {
      'model.onnx': floatGraph,
      'model_q4.onnx': q.bytes,
      'model_q4_ref.onnx': dequantizedReference(floatGraph, false),
    });
    const m = await loadModel(dir, { onnx: 'q4' });
    try {
      expect(m.files.onnx).toBe(join(dir, 'onnx', 'model_q4.onnx'));
      expect(m.notes.join('\n')).toMatch(
        /onnx\/model_q4\.onnx has quantized weights \(MatMulNBits ×35: block-quantized 2\/4\/8-bit weights \(com\.microsoft MatMulNBits\)\)/,
      );
      expect(m.fingerprint.id).not.toBe(float.fingerprint.id);
      const runner = new ModelRunner(m);
      const logits = (await runner.forward(ids, null)).logits;
      const ref = await loadModel(dir, { onnx: 'model_q4_ref.onnx' });
      const exact = logitStats((await new ModelRunner(ref).forward(ids, null)).logits, logits, m.spec.vocabSize);
      await ref.session.release();
      expect(exact.maxAbs).toBeLessThanOrEqual(1e-4 * exact.maxRef);
      const near = logitStats(floatLogits, logits, m.spec.vocabSize);
      expect(near.relRms).toBeGreaterThan(0.01); // it is quantized
      expect(near.relRms).toBeLessThan(0.15);
      expect(near.agree).toBeGreaterThanOrEqual(0.85);
      // with a KV cache: a prefill in chunks equals one pass
      const whole = await runner.capture(ids);
      const chunked = await runner.capture(ids, { chunk: 10 });
      expect(cacheDiff(whole.cache, chunked.cache)).toBeLessThan(1e-4);
    } finally {
      await m.session.release();
    }
  });

  it('MatMulNBits symmetric (no zero_points input) equals its dequantized float graph', async () => {
    const dir = variantDir('stories-q4sym', {
      'model_q4.onnx': quantizeMatMulNBits(floatGraph, { symmetric: true }).bytes,
      'model_q4_ref.onnx': dequantizedReference(floatGraph, true),
    });
    const q = await loadModel(dir, { onnx: 'model_q4.onnx' });
    const ref = await loadModel(dir, { onnx: 'onnx/model_q4_ref.onnx' });
    const s = logitStats(
      (await new ModelRunner(ref).forward(ids, null)).logits,
      (await new ModelRunner(q).forward(ids, null)).logits,
      q.spec.vocabSize,
    );
    expect(s.maxAbs).toBeLessThanOrEqual(1e-4 * s.maxRef);
    expect(logitStats(floatLogits, (await new ModelRunner(q).forward(ids, null)).logits, q.spec.vocabSize).agree).toBeGreaterThanOrEqual(
      0.85,
    );
    await q.session.release();
    await ref.session.release();
  });

  it('int8 DynamicQuantizeLinear + MatMulInteger: loads, says so, stays near the float model, and greedy text keeps its start', async () => {
    const q = quantizeMatMulInt8(floatGraph);
    const dir = variantDir('stories-int8', { 'model_quantized.onnx': q.bytes });
    const m = await loadModel(dir);
    try {
      expect(m.files.onnx).toBe(join(dir, 'onnx', 'model_quantized.onnx'));
      expect(m.notes.join('\n')).toMatch(/MatMulInteger ×35: int8 weights with activations quantized at run time/);
      const runner = new ModelRunner(m);
      const near = logitStats(floatLogits, (await runner.forward(ids, null)).logits, m.spec.vocabSize);
      expect(near.relRms).toBeGreaterThan(0.01);
      expect(near.relRms).toBeLessThan(0.15);
      expect(near.agree).toBeGreaterThanOrEqual(0.85);
      const g = await runner.generate(m.tokenizer.encode('Once upon a time'), { maxNewTokens: 12 });
      expect(m.tokenizer.decode(g.ids)).toMatch(/^, there was a little girl/);
    } finally {
      await m.session.release();
    }
  });
});

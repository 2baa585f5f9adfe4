import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { floatToHalf, halfToFloat } from '../../src/io/fp16.js';
import { readKvCache, writeKvCache } from '../../src/model/kv-io.js';
import { describeModel, loadModel, type LoadedModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import { FIXTURE, tempDir } from './helpers.js';
import { ropeConsistency } from './rope-check.js';

const TEXT = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. '.repeat(8);

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('onnxruntime-genai fp16 fixture', () => {
  let model: LoadedModel;
  let runner: ModelRunner;
  beforeAll(async () => {
    model = await loadModel(FIXTURE);
    runner = new ModelRunner(model);
  });

  it("normalizes the spec; RoPE comes from the graph's cos/sin cache", () => {
    expect(model.files.format).toBe('genai');
    expect(model.files.externalData).toMatch(/model\.onnx\.data$/);
    expect(model.spec).toMatchObject({
      architecture: 'LlamaForCausalLM',
      family: 'llama',
      layers: 2,
      heads: 1,
      kvHeads: 1,
      headDim: 16,
      hidden: 16,
      vocabSize: 32000,
      kvDtype: 'float16',
      maxPositions: 2048,
      rope: [
        { theta: 10000, rotaryDim: 16, layout: 'half' },
        { theta: 10000, rotaryDim: 16, layout: 'half' },
      ],
    });
    expect(model.ropeSource).toMatch(/RotaryEmbedding\(half-split\) cos\/sin cache \[2048, 8\].*theta .* → 10000/);
    expect(model.tokenizer.encode('Once upon a time')).toEqual([1, 9038, 2501, 263, 931]);
  });

  it('fingerprint is stable and short', async () => {
    const d = await describeModel(FIXTURE);
    expect(d.fingerprint.id).toMatch(/^[0-9a-f]{16}$/);
    expect(d.fingerprint).toEqual(model.fingerprint);
    expect(d.fingerprint.weights).toMatchObject({ file: 'model.onnx.data', bytes: 2130080 });
    expect(d.fingerprint.weights!.sampleSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(d.fingerprint.architecture).toMatchObject({
      architecture: 'LlamaForCausalLM',
      layers: 2,
      kv_heads: 1,
      head_dim: 16,
      kv_dtype: 'float16',
    });
  });

  it('captures an fp16 cache with the right shapes, and it round-trips through safetensors', async () => {
    const events: number[] = [];
    const { ids, cache } = await runner.capture(TEXT, { chunk: 64, onProgress: (e) => events.push(e.done ?? 0) });
    expect(ids[0]).toBe(1);
    expect(cache).toMatchObject({ layers: 2, kvHeads: 1, headDim: 16, tokens: ids.length, dtype: 'float16', startPosition: 0 });
    expect(events.at(-1)).toBe(ids.length);
    for (const a of [...cache.keys, ...cache.values]) {
      expect(a.length).toBe(ids.length * 16);
      expect(a.every((v) => Number.isFinite(v) && halfToFloat(floatToHalf(v)) === v)).toBe(true);
    }
    expect(cache.keys[0].some((v) => v !== 0)).toBe(true);
    const p = join(tempDir(), 'kv.safetensors');
    await writeKvCache(p, cache, { model: model.name, fingerprint: model.fingerprint.id });
    const back = await readKvCache(p);
    expect(back.cache).toEqual(cache);
    expect(back.metadata.fingerprint).toBe(model.fingerprint.id);
  });

  it('a cached step equals full recompute (fp16 tolerance)', async () => {
    const ids = model.tokenizer.encode(TEXT).slice(0, 100);
    const full = await runner.forward(ids, null);
    expect(full.logits.length).toBe(100 * 32000);
    const { cache } = await runner.prefill(ids.slice(0, 99), { chunk: 32 });
    const step = await runner.forward(ids.slice(99), cache);
    expect(maxAbsDiff(step.logits, full.logits.subarray(99 * 32000))).toBeLessThan(2e-2);
    for (let l = 0; l < 2; l++) {
      expect(maxAbsDiff(step.present.keys[l], full.present.keys[l])).toBeLessThan(2e-2);
      expect(maxAbsDiff(step.present.values[l], full.present.values[l])).toBeLessThan(2e-2);
    }
  });

  it('extends a past by several tokens even though this graph only takes one at a time', async () => {
    expect(await runner.multiTokenWithPast()).toBe(false);
    const ids = model.tokenizer.encode(TEXT).slice(0, 40);
    const full = await runner.forward(ids, null);
    const a = await runner.forward(ids.slice(0, 30), null);
    const b = await runner.forward(ids.slice(30), a.present);
    expect(b.present.tokens).toBe(40);
    expect(b.logits.length).toBe(10 * 32000);
    expect(maxAbsDiff(b.logits, full.logits.subarray(30 * 32000))).toBeLessThan(2e-2);
    // The same restored past scored twice (the MMLU pattern) gives the same answer.
    const c = await runner.forward(ids.slice(30), a.present);
    expect(c.logits).toEqual(b.logits);
  });

  it('generates deterministically (greedy and seeded sampling)', async () => {
    const prompt = model.tokenizer.encode('Once upon a time');
    const g1 = await runner.generate(prompt, { maxNewTokens: 8, eos: [] });
    const g2 = await runner.generate(prompt, { maxNewTokens: 8, eos: [] });
    expect(g1.ids).toHaveLength(8);
    expect(g1.ids).toEqual(g2.ids);
    const s1 = await runner.generate(prompt, { maxNewTokens: 8, temperature: 1, seed: 3, eos: [] });
    const s2 = await runner.generate(prompt, { maxNewTokens: 8, temperature: 1, seed: 3, eos: [] });
    expect(s1.ids).toEqual(s2.ids);
  });
});

describe('RoPE spec matches what the genai graph does', () => {
  it('layer-0 keys of a repeated token agree once un-rotated with the fitted spec, and not with the wrong layout', async () => {
    const model = await loadModel(FIXTURE);
    const runner = new ModelRunner(model);
    const ids = [1, 450, 29871, 450, 1200, 8, 450, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 450];
    const { cache } = await runner.capture(ids);
    const ok = Math.max(ropeConsistency(cache, model.spec.rope[0]!, 1, 3), ropeConsistency(cache, model.spec.rope[0]!, 1, 19));
    expect(ok).toBeLessThan(5e-3);
    const wrong = ropeConsistency(cache, { ...model.spec.rope[0]!, layout: 'interleaved' }, 1, 19);
    expect(wrong).toBeGreaterThan(0.05);
  });
});

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readKvCache } from '../../src/model/kv-io.js';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { kvtc, tempDir } from './helpers.js';
import { ropeConsistency } from './rope-check.js';

const present = existsSync(join(DEFAULT_MODEL_DIR, 'config.json'));

describe.skipIf(!present)('bundled stories260K (Optimum layout, fp32)', () => {
  let model: LoadedModel;
  let runner: ModelRunner;
  beforeAll(async () => {
    model = await loadModel(DEFAULT_MODEL_DIR);
    runner = new ModelRunner(model);
  });

  it('loads with the documented shape', () => {
    expect(model.files.format).toBe('optimum');
    expect(model.spec).toMatchObject({
      family: 'llama',
      layers: 5,
      heads: 8,
      kvHeads: 4,
      headDim: 8,
      hidden: 64,
      vocabSize: 512,
      kvDtype: 'float32',
      rope: Array(5).fill(expect.objectContaining({ theta: 10000, rotaryDim: 8 })),
    });
  });

  it('RoPE layout and theta in the spec are what the graph applies', async () => {
    const ids = model.tokenizer.encode('the cat and the dog and the bird saw the sun');
    const the = ids
      .map((t, i) => [t, i])
      .filter(([t]) => t === ids[1])
      .map(([, i]) => i);
    expect(the.length).toBeGreaterThan(2);
    const { cache } = await runner.capture(ids);
    expect(ropeConsistency(cache, model.spec.rope[0]!, the[0], the.at(-1)!)).toBeLessThan(1e-4);
    const other = model.spec.rope[0]!.layout === 'half' ? 'interleaved' : 'half';
    expect(ropeConsistency(cache, { ...model.spec.rope[0]!, layout: other }, the[0], the.at(-1)!)).toBeGreaterThan(1e-2);
  });

  it('chunked prefill and cached steps equal full recompute (fp32)', async () => {
    expect(await runner.multiTokenWithPast()).toBe(true);
    const ids = model.tokenizer.encode('Once upon a time, there was a little girl named Lily. She loved to play outside. '.repeat(3));
    const full = await runner.forward(ids, null);
    const { cache } = await runner.prefill(ids.slice(0, -3), { chunk: 7 });
    const tail = await runner.forward(ids.slice(-3), cache);
    const V = model.spec.vocabSize;
    let d = 0;
    for (let i = 0; i < 3 * V; i++) d = Math.max(d, Math.abs(tail.logits[i] - full.logits[(ids.length - 3) * V + i]));
    expect(d).toBeLessThan(1e-3);
  });

  it('generate continues "Once upon a time" with a story', async () => {
    const r = await kvtc('generate', '--prompt', 'Once upon a time', '--max-new-tokens', '40');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^, there was a/);
    expect(r.stdout.split(' ').length).toBeGreaterThan(10);
  });

  it('capture on the default model writes an F32 cache', async () => {
    const out = join(tempDir(), 'kv.safetensors');
    const r = await kvtc(
      'capture',
      '--text',
      join(DEFAULT_MODEL_DIR, 'config.json'),
      '--out',
      out,
      '--max-tokens',
      '200',
      '--chunk',
      '64',
      '--json',
    );
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s).toMatchObject({ model: 'stories260k', layers: 5, kv_heads: 4, head_dim: 8, dtype: 'float32' });
    const { cache } = await readKvCache(out);
    expect(cache.tokens).toBe(200);
    expect(s.bytes).toBeGreaterThan(5 * 2 * 4 * 8 * 4 * s.tokens);
  });
});

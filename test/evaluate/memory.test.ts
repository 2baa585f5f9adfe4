/**
 * evaluate's per-pass bound on logits (src/evaluate/memory.ts): the pass size per vocabulary, and
 * that scoring perplexity in small passes gives the figures of one large pass.
 */
import { describe, expect, it } from 'vitest';
import { createCodecs } from '../../src/evaluate/codecs.js';
import { MAX_LOGITS_BYTES, passTokens } from '../../src/evaluate/memory.js';
import { planPerplexity, rowNll, scorePerplexityWindow } from '../../src/evaluate/perplexity.js';
import { logSoftmax } from '../../src/evaluate/stats.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { mulberry32 } from '../../src/random.js';
import { readFileSync } from 'node:fs';
import { WIKITEXT_TEST } from '../../src/paths.js';

describe('passTokens', () => {
  it.each([
    [512, 256], // the bundled model: the runner's default chunk
    [49_152, 256], // SmolLM2
    [262_144, 64], // Gemma 3: 64 MiB of logits
    [1 << 24, 16], // never under 16
  ])('vocabulary %i → %i tokens per pass', (vocab, tokens) => {
    expect(passTokens(vocab)).toBe(tokens);
    if (tokens > 16) expect(tokens * vocab * 4).toBeLessThanOrEqual(MAX_LOGITS_BYTES);
  });
});

describe('rowNll', () => {
  it('equals −logSoftmax(row)[target] exactly, without the vocabulary-sized array', () => {
    const rand = mulberry32(7);
    for (let t = 0; t < 20; t++) {
      const row = Float32Array.from({ length: 1000 }, () => (rand() - 0.5) * 40);
      const target = Math.floor(rand() * row.length);
      expect(rowNll(row, target)).toBe(-logSoftmax(row)[target]);
    }
    expect(rowNll(new Float32Array(4).fill(-Infinity), 0)).toBeNaN();
  });
});

describe('scorePerplexityWindow', () => {
  it('16-token passes give the NLL of one 128-token pass (uncompressed and int4), within float32 noise', async () => {
    const model = await loadModel(DEFAULT_MODEL_DIR);
    const runner = new ModelRunner(model);
    const codecs = await createCodecs(['int4']);
    const plan = planPerplexity(runner, readFileSync(WIKITEXT_TEST, 'utf8'), { tokens: 512 });
    expect(plan).toMatchObject({ windows: 1, window: 512, context: 384 });
    const whole = (await scorePerplexityWindow(runner, codecs, plan, 0, 256))!;
    const pieces = (await scorePerplexityWindow(runner, codecs, plan, 0, 16))!;
    expect(pieces.scored).toBe(128);
    expect(pieces.cacheTokens).toBe(383);
    // Sums of 128 NLLs of a few nats: float32 logits differ in their last bits between pass shapes.
    expect(Math.abs(pieces.baselineNll - whole.baselineNll)).toBeLessThan(1e-3 * whole.baselineNll);
    expect(Math.abs(pieces.codecs.int4.nll - whole.codecs.int4.nll)).toBeLessThan(1e-3 * whole.codecs.int4.nll);
    expect(pieces.codecs.int4.compressedTokens).toBe(whole.codecs.int4.compressedTokens);
    await model.session.release();
  });
});

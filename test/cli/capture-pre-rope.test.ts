/**
 * `kvtc capture --pre-rope` against an independent un-rotation written from transformers'
 * Llama RoPE (models/llama/modeling_llama.py: `apply_rotary_pos_emb`, `rotate_half`;
 * modeling_rope_utils.py `_compute_default_rope_parameters`):
 *   inv_freq = 1 / theta^(arange(0, dim, 2) / dim);  emb = cat(freqs, freqs)
 *   k_rot = k * cos(emb) + rotate_half(k) * sin(emb),  rotate_half(x) = cat(-x2, x1)
 * so k = k_rot * cos(emb) - rotate_half(k_rot) * sin(emb) (rotation by −θ), in float64 here.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readKvCache } from '../../src/model/kv-io.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { FIXTURE, kvtc, tempDir } from '../model/helpers.js';

function unrotateHalf(k: Float32Array, heads: number, tokens: number, dim: number, theta: number, start = 0): Float64Array {
  const half = dim / 2;
  const out = new Float64Array(k.length);
  for (let h = 0; h < heads; h++) {
    for (let t = 0; t < tokens; t++) {
      const o = (h * tokens + t) * dim;
      for (let i = 0; i < dim; i++) {
        const f = 1 / theta ** ((2 * (i % half)) / dim);
        const a = (start + t) * f;
        const rot = i < half ? -k[o + i + half] : k[o + i - half]; // rotate_half
        // undo: k_rot*cos - rotate_half(k_rot)*sin
        out[o + i] = k[o + i] * Math.cos(a) - rot * Math.sin(a);
      }
    }
  }
  return out;
}

describe('kvtc capture --pre-rope', () => {
  for (const [name, model, theta] of [
    ['the bundled fp32 Llama', DEFAULT_MODEL_DIR, 10000],
    ['the genai fp16 export', FIXTURE, 10000],
  ] as const) {
    it(`agrees with an independent un-rotation to 1e-5 relative on every layer (${name})`, async () => {
      const d = tempDir('kvtc-prerope-');
      writeFileSync(join(d, 't.txt'), readFileSync(WIKITEXT_TEST, 'utf8').slice(0, 4000));
      const plain = join(d, 'kv.safetensors');
      const pre = join(d, 'pre.safetensors');
      expect(
        (await kvtc('capture', '--model', model, '--text', join(d, 't.txt'), '--max-tokens', '200', '--out', plain, '--quiet')).code,
      ).toBe(0);
      const r = await kvtc(
        'capture',
        '--model',
        model,
        '--text',
        join(d, 't.txt'),
        '--max-tokens',
        '200',
        '--out',
        pre,
        '--pre-rope',
        '--quiet',
      );
      expect(r.code, r.stderr).toBe(0);
      const a = (await readKvCache(plain)).cache;
      const { cache: b, metadata } = await readKvCache(pre);
      expect(metadata.keys).toBe('pre-rope');
      expect(b.dtype).toBe('float32');
      for (let l = 0; l < a.layers; l++) {
        const want = unrotateHalf(a.keys[l], a.kvHeads, a.tokens, a.headDim, theta);
        let num = 0;
        let den = 0;
        for (let i = 0; i < want.length; i++) {
          num += (b.keys[l][i] - want[i]) ** 2;
          den += want[i] ** 2;
        }
        expect(Math.sqrt(num / den)).toBeLessThan(1e-5);
        expect(b.values[l]).toEqual(a.values[l]);
      }
      // Such a file is for inspection: encode refuses it rather than un-rotating twice.
      const e = await kvtc('encode', '--profile', join(DEFAULT_PROFILES_DIR, 'stories260k'), '--kv', pre, '--out', join(d, 'x.kvtc'));
      expect(e.code).toBe(1);
      expect(e.stderr).toMatch(/KV_INVALID.*--pre-rope/);
    });
  }
});

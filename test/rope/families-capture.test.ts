/**
 * `kvtc capture --pre-rope` on every family fixture, in both config.json forms (transformers
 * 4.x and 5.x), agrees with the independent un-rotation written from the transformers source
 * (transformers-reference.ts) to 1e-5 relative on every layer: kvtc reads each family's RoPE
 * per layer (NoPE layers, per-layer bases, partial rotary, scaling, attention factor) as
 * transformers does. And a config that contradicts its graph is refused at capture, with the
 * suspect setting named (src/rope/data-check.ts).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readKvCache } from '../../src/model/kv-io.js';
import { WIKITEXT_TEST } from '../../src/paths.js';
import { kvtc, tempDir } from '../model/helpers.js';
import { buildFamilyFixture, family, FAMILIES, type ConfigStyle } from './family-fixtures.js';
import { referenceUnrotate, relativeError } from './transformers-reference.js';

const TOKENS = 200;
let dir: string;
let text: string;
beforeAll(() => {
  dir = tempDir('kvtc-families-capture-');
  text = join(dir, 't.txt');
  writeFileSync(text, readFileSync(WIKITEXT_TEST, 'utf8').slice(0, 4000));
});

const capture = (model: string, out: string, ...extra: string[]) =>
  kvtc('capture', '--model', model, '--text', text, '--max-tokens', String(TOKENS), '--chunk', '256', '--out', out, '--quiet', ...extra);

describe('kvtc capture --pre-rope on each model family', () => {
  const cases = FAMILIES.flatMap((def) => (['4.x', '5.x'] as ConfigStyle[]).map((style) => [def.name, style, def] as const));
  it.each(cases)('%s (%s config): agrees with the transformers un-rotation to 1e-5 relative on every layer', async (name, style, def) => {
    const fx = await buildFamilyFixture(def, style, join(dir, `${name}-${style}`));
    const plain = join(dir, `${name}-${style}.safetensors`);
    const pre = join(dir, `${name}-${style}-pre.safetensors`);
    const a = await capture(fx.dir, plain);
    expect(a.code, a.stderr).toBe(0);
    const b = await capture(fx.dir, pre, '--pre-rope');
    expect(b.code, b.stderr).toBe(0);
    const k = (await readKvCache(plain)).cache;
    const { cache: p, metadata } = await readKvCache(pre);
    expect(metadata.keys).toBe('pre-rope');
    expect(k.tokens).toBe(TOKENS);
    for (let l = 0; l < def.layers; l++) {
      // One forward pass of TOKENS tokens: longrope's sequence length is TOKENS (> 64: long factors).
      const want = referenceUnrotate(k.keys[l], k.kvHeads, k.tokens, k.headDim, fx.ropes[l], k.startPosition);
      expect(relativeError(p.keys[l], want), `layer ${l}`).toBeLessThan(1e-5);
      expect(p.values[l]).toEqual(k.values[l]);
    }
  });
});

describe('kvtc capture --pre-rope on float16 caches', () => {
  it.each(['gemma3', 'phi3-longrope', 'smollm3'])(
    '%s: the fp16 keys un-rotate as the reference does, and the RoPE check passes on fp16 rounding',
    async (name) => {
      const def = family(name);
      const fx = await buildFamilyFixture(def, '5.x', join(dir, `${name}-f16`), { kvDtype: 'float16' });
      const plain = join(dir, `${name}-f16.safetensors`);
      const pre = join(dir, `${name}-f16-pre.safetensors`);
      expect((await capture(fx.dir, plain)).code).toBe(0);
      const b = await capture(fx.dir, pre, '--pre-rope');
      expect(b.code, b.stderr).toBe(0);
      const k = (await readKvCache(plain)).cache;
      expect(k.dtype).toBe('float16');
      const p = (await readKvCache(pre)).cache;
      for (let l = 0; l < def.layers; l++) {
        const want = referenceUnrotate(k.keys[l], k.kvHeads, k.tokens, k.headDim, fx.ropes[l], k.startPosition);
        expect(relativeError(p.keys[l], want), `layer ${l}`).toBeLessThan(1e-5);
      }
    },
  );
});

describe('kvtc capture refuses a config that contradicts the graph', () => {
  const wrong: [string, string, (c: Record<string, unknown>) => Record<string, unknown>, RegExp][] = [
    ['theta ×10', 'mixtral', (c) => ({ ...c, rope_theta: 1e7 }), /ROPE_MISMATCH.*layer 0: rope_theta/],
    [
      'layout swapped',
      'llama-interleaved-linear',
      ({ rope_interleaved: _, ...c }) => c,
      /ROPE_MISMATCH.*RoPE layout: the keys are rotated in interleaved pairs/,
    ],
    [
      'a NoPE layer read as rotated',
      'smollm3',
      (c) => ({ ...c, no_rope_layers: [1, 1, 1, 1] }),
      /ROPE_MISMATCH.*layer 3 is read as rotated/,
    ],
    ['scaling ignored', 'llama-llama3', (c) => ({ ...c, rope_scaling: null }), /ROPE_MISMATCH.*layer 0.*suspect RoPE scaling/],
  ];
  it.each(wrong)('%s (%s): exit 1, ROPE_MISMATCH naming the setting, nothing written', async (_what, name, edit, re) => {
    const fx = await buildFamilyFixture(family(name), '4.x', join(dir, `wrong-${name}`));
    const cfgPath = join(fx.dir, 'config.json');
    writeFileSync(cfgPath, JSON.stringify(edit(JSON.parse(readFileSync(cfgPath, 'utf8')))));
    const out = join(dir, `wrong-${name}.safetensors`);
    const r = await capture(fx.dir, out);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(re);
    expect(r.stderr).toMatch(/fix/i);
    expect(() => readFileSync(out)).toThrow();
  });
});

/**
 * The family fixtures apply RoPE the way transformers does and the independent reference
 * (transformers-reference.ts) undoes it exactly: a lone token's keys at position p, un-rotated,
 * equal its keys at position 0 on every layer (with one token, attention returns its own value,
 * so nothing else depends on p), and so do a repeated token's layer-0 keys inside a prompt.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildLlamaGraph } from '../../src/convert/llama-graph.js';
import { normalizeHfConfig } from '../../src/model/config.js';
import { createSession } from '../../src/onnx/session.js';
import { emptyPast, step, type CacheShape } from '../convert/run-llama.js';
import { buildFamilyFixture, FAMILIES, type ConfigStyle, type FamilyFixture } from './family-fixtures.js';
import { referenceUnrotate, relativeError, transformersLayerRopes } from './transformers-reference.js';

let tmp: string;
beforeAll(async () => void (tmp = await mkdtemp(join(tmpdir(), 'kvtc-families-'))));
afterAll(async () => rm(tmp, { recursive: true, force: true }));

const head = (k: Float32Array | Float64Array, kvHeads: number, tokens: number, D: number, t: number) =>
  Float64Array.from({ length: kvHeads * D }, (_, i) => k[(Math.floor(i / D) * tokens + t) * D + (i % D)]);

const rms = (x: Float64Array, w: ArrayLike<number>, eps = 1e-6) => {
  const ms = x.reduce((m, v) => m + v * v, 0) / x.length;
  return x.map((v, i) => (v / Math.sqrt(ms + eps)) * w[i]);
};

/** Layer 0's key of token `tok` at position p before RoPE, from the weights. [kvHeads * headDim] */
function preRopeKey0(fx: FamilyFixture, tok: number, p: number): Float64Array {
  const { hidden: H, kvHeads: KV, headDim: D, qkNorm } = fx.def;
  const lw = fx.weights.layers[0];
  let x = Float64Array.from(fx.weights.embedTokens.subarray(tok * H, (tok + 1) * H));
  if (fx.positionEmbeddings) x = x.map((v, i) => v + fx.positionEmbeddings![p * H + i]);
  const h = rms(x, lw.inputNorm);
  let k = Float64Array.from({ length: KV * D }, (_, r) => {
    let s = 0;
    for (let c = 0; c < H; c++) s += lw.kProj[r * H + c] * h[c];
    return s;
  });
  if (qkNorm === 'projection') k = rms(k, lw.kNorm!);
  if (qkNorm === 'head') {
    for (let j = 0; j < KV; j++) k.set(rms(k.slice(j * D, (j + 1) * D), lw.kNorm!), j * D);
  }
  return k;
}

const cases = FAMILIES.flatMap((def) => (['4.x', '5.x'] as ConfigStyle[]).map((style) => [def.name, style, def] as const));

describe('family fixtures', () => {
  it('both config styles describe the same RoPE per layer', () => {
    for (const def of FAMILIES) {
      const a = transformersLayerRopes(def.config['4.x']);
      const b = transformersLayerRopes(def.config['5.x']);
      expect(b, def.name).toEqual(a);
    }
  });

  it('cover NoPE, per-layer bases, partial rotary, both layouts, q/k norms and every scaling rule', () => {
    const all = FAMILIES.flatMap((d) => transformersLayerRopes(d.config['4.x']));
    expect(all.some((r) => r === null)).toBe(true);
    expect(all.some((r) => r && r.layout === 'interleaved')).toBe(true);
    expect(all.some((r) => r && r.attentionFactor > 1 && !r.long)).toBe(true); // yarn
    expect(all.some((r) => r && r.long)).toBe(true); // longrope
    const gemma3 = transformersLayerRopes(FAMILIES.find((d) => d.name === 'gemma3')!.config['4.x']);
    expect(gemma3.map((r) => r!.invFreq[1])).toEqual([0, 1, 2, 3, 4, 5].map((l) => ((l + 1) % 3 ? gemma3[0]! : gemma3[2]!).invFreq[1]));
    expect(gemma3[0]!.invFreq[1]).not.toBeCloseTo(gemma3[2]!.invFreq[1], 6);
    const neox = transformersLayerRopes(FAMILIES.find((d) => d.name === 'gpt_neox')!.config['4.x']);
    expect(neox[0]!.rotaryDim).toBe(4);
  });

  it.each(cases)('%s (%s): keys un-rotated by the reference do not depend on position, on every layer', async (name, style, def) => {
    const fx = await buildFamilyFixture(def, style, join(tmp, `${name}-${style}`));
    expect(JSON.parse(await readFile(join(fx.dir, 'config.json'), 'utf8')).model_type).toBe(def.config[style].model_type);
    const session = await createSession(join(fx.dir, 'onnx', 'model.onnx'));
    const shape: CacheShape = { layers: def.layers, kvHeads: def.kvHeads, headDim: def.headDim, kvDtype: 'float32' };
    const D = def.headDim;
    const lone = async (p: number) => (await step(session, shape, [[42]], emptyPast(shape), { positions: [[p]] })).presentF32;
    const at0 = await lone(0);
    for (const p of [1, 37, 100, 200]) {
      const atP = await lone(p);
      for (let l = 0; l < def.layers; l++) {
        const want = referenceUnrotate(at0[2 * l], def.kvHeads, 1, D, fx.ropes[l], 0);
        const got = referenceUnrotate(atP[2 * l], def.kvHeads, 1, D, fx.ropes[l], p);
        if (def.absolutePositions) expect(relativeError(got, want)).toBeGreaterThan(0.01);
        else expect(relativeError(got, want), `layer ${l} position ${p}`).toBeLessThan(1e-5);
      }
    }
    // Layer 0's un-rotated key is the key transformers computes before RoPE, recomputed here
    // from the weights: k_norm(k_proj(input_layernorm(embed))) (checks the q/k norm's dims and
    // that the attention factor is on the cache).
    for (const p of [0, 37, 200]) {
      const got = referenceUnrotate((await lone(p))[0], def.kvHeads, 1, D, fx.ropes[0], p);
      expect(relativeError(got, preRopeKey0(fx, 42, p)), `position ${p}`).toBeLessThan(1e-5);
    }

    // In a prompt (one forward pass), the same token's layer-0 keys agree once un-rotated.
    const ids = [1, 42, 300, 42, 77, 300, 42, 5, 77, 42];
    const r = await step(session, shape, [ids], emptyPast(shape));
    const k0 = referenceUnrotate(r.presentF32[0], def.kvHeads, ids.length, D, fx.ropes[0], 0);
    const first = head(k0, def.kvHeads, ids.length, D, 1);
    for (const t of [3, 6, 9]) {
      const e = relativeError(head(k0, def.kvHeads, ids.length, D, t), first);
      if (def.absolutePositions) expect(e).toBeGreaterThan(0.01);
      else expect(e).toBeLessThan(1e-5);
    }
    await session.release();
  });

  it.each(FAMILIES.map((d) => [d.name, d] as const))(
    "%s: the converter's default RoPE (kvtc's reading of config.json) builds the same keys",
    async (name, def) => {
      const fx = await buildFamilyFixture(def, '5.x', join(tmp, `conv-${name}`));
      const { spec } = normalizeHfConfig(fx.config);
      const onnx = buildLlamaGraph(
        fx.weights,
        { ...spec, kvDtype: 'float32' },
        { rmsNormEps: 1e-6, qkNorm: def.qkNorm, positionEmbeddings: fx.positionEmbeddings },
      );
      const [a, b] = await Promise.all([createSession(join(fx.dir, 'onnx', 'model.onnx')), createSession(onnx)]);
      const shape: CacheShape = { layers: def.layers, kvHeads: def.kvHeads, headDim: def.headDim, kvDtype: 'float32' };
      // Phi-3's fixture projects q/k/v in one fused MatMul; the converted graph in three.
      const fusedIn = async (bytes: Uint8Array) => Buffer.from(bytes).includes('qkv_proj.weight.T');
      expect(await fusedIn(await readFile(join(fx.dir, 'onnx', 'model.onnx')))).toBe(def.fusedQkv === true);
      expect(await fusedIn(onnx)).toBe(false);
      // A prompt past longrope's switch (64) and lone tokens on both sides of it.
      const ids = Array.from({ length: 100 }, (_, i) => 3 + ((i * 7) % 50));
      for (const [tokens, positions] of [
        [ids, undefined],
        [[42], [[10]]],
        [[42], [[150]]],
      ] as const) {
        const ra = await step(a, shape, [tokens as number[]], emptyPast(shape), positions ? { positions: positions as number[][] } : {});
        const rb = await step(b, shape, [tokens as number[]], emptyPast(shape), positions ? { positions: positions as number[][] } : {});
        for (let l = 0; l < def.layers; l++)
          expect(relativeError(rb.presentF32[2 * l], ra.presentF32[2 * l]), `layer ${l}`).toBeLessThan(1e-5);
      }
      await Promise.all([a.release(), b.release()]);
    },
  );

  it('a sliding layer can cache only its window (present holds the last W tokens, as some Gemma exports do)', async () => {
    const def = FAMILIES.find((d) => d.name === 'gemma2')!;
    const full = await buildFamilyFixture(def, '5.x', join(tmp, 'win-full'));
    const win = await buildFamilyFixture(def, '5.x', join(tmp, 'win-16'), { cacheWindow: [16, null] });
    const [a, b] = await Promise.all([
      createSession(join(full.dir, 'onnx', 'model.onnx')),
      createSession(join(win.dir, 'onnx', 'model.onnx')),
    ]);
    const shape: CacheShape = { layers: def.layers, kvHeads: def.kvHeads, headDim: def.headDim, kvDtype: 'float32' };
    const ids = Array.from({ length: 40 }, (_, i) => 3 + i);
    const ra = await step(a, shape, [ids], emptyPast(shape));
    const rb = await step(b, shape, [ids], emptyPast(shape));
    expect(rb.present['past_key_values.0.key'].dims).toEqual([1, def.kvHeads, 16, def.headDim]);
    expect(rb.present['past_key_values.1.key'].dims).toEqual([1, def.kvHeads, 40, def.headDim]);
    const D = def.headDim;
    for (let h = 0; h < def.kvHeads; h++) {
      const want = ra.presentF32[0].subarray((h * 40 + 24) * D, (h * 40 + 40) * D);
      expect(Array.from(rb.presentF32[0].subarray(h * 16 * D, (h + 1) * 16 * D))).toEqual(Array.from(want));
    }
    expect(rb.logits).toEqual(ra.logits); // attention inside the pass is unchanged
    await Promise.all([a.release(), b.release()]);
    // kvtc refuses such a cache with a typed error naming the layer, not an internal one (exit 70).
    const { kvtc } = await import('../model/helpers.js');
    const r = await kvtc(
      'capture',
      '--model',
      win.dir,
      '--text',
      'calibration-data/inaugural-1789-Washington.txt',
      '--max-tokens',
      '64',
      '--out',
      join(tmp, 'win.safetensors'),
    );
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/UNSUPPORTED_ARCHITECTURE.*caches only a window/);
  });
});

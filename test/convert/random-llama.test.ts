import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildRandomLlama,
  normals,
  powerLawSpectrum,
  randomLlamaWeights,
  spectralWeight,
  withKvSpectrum,
  type RandomLlamaOptions,
  type RandomWeightShape,
} from '../../src/convert/random-llama.js';
import { KvtcError } from '../../src/errors.js';
import { symmetricEigen } from '../../src/fit/eigen.js';
import { mulberry32 } from '../../src/random.js';
import { normalizeHfConfig } from '../../src/model/config.js';
import { ropeInvFreq } from '../../src/rope/freqs.js';
import type { RopeSpec } from '../../src/model/types.js';
import { createSession } from '../../src/onnx/session.js';
import { emptyPast, logitsAt, maxAbsDiff, step, type CacheShape } from './run-llama.js';

let tmp: string;
beforeAll(async () => void (tmp = await mkdtemp(join(tmpdir(), 'kvtc-random-'))));
afterAll(async () => rm(tmp, { recursive: true, force: true }));

const LLAMA3: RopeSpec['scaling'] = { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 };
const IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 300, 17, 499];

async function build(name: string, o: Omit<RandomLlamaOptions, 'out'>) {
  const m = await buildRandomLlama({ out: join(tmp, name), std: 0.15, ...o });
  const session = await createSession(join(m.dir, 'onnx', 'model.onnx'));
  const shape: CacheShape = { layers: m.spec.layers, kvHeads: m.spec.kvHeads, headDim: m.spec.headDim, kvDtype: m.spec.kvDtype };
  return { m, session, shape };
}

/** Rotates one head vector [headDim] by position p, Hugging Face half layout, first rotaryDim dims. */
function rotate(x: Float32Array, p: number, rope: RopeSpec): Float64Array {
  const inv = ropeInvFreq(rope);
  const h = rope.rotaryDim / 2;
  const out = Float64Array.from(x);
  for (let i = 0; i < h; i++) {
    const c = Math.cos(p * inv[i]);
    const s = Math.sin(p * inv[i]);
    out[i] = x[i] * c - x[i + h] * s;
    out[i + h] = x[i + h] * c + x[i] * s;
  }
  return out;
}

describe('buildRandomLlama', () => {
  it.each([
    ['gqa-llama3', { heads: 4, kvHeads: 2, headDim: 16, hidden: 48, rope: { scaling: LLAMA3 } }],
    [
      'mqa-partial-linear',
      {
        heads: 6,
        kvHeads: 1,
        headDim: 32,
        hidden: 96,
        layers: 3,
        rope: { rotaryDim: 16, theta: 500000, scaling: { type: 'linear', factor: 4 } },
      },
    ],
    ['mha-untied', { heads: 2, kvHeads: 2, headDim: 128, hidden: 64, layers: 1, untied: true }],
  ] as [string, Omit<RandomLlamaOptions, 'out'>][])(
    '%s: config parses, cached == full, keys carry RoPE of position_ids',
    async (name, o) => {
      const { m, session, shape } = await build(name, o);
      const cfg = normalizeHfConfig(JSON.parse(await readFile(join(m.dir, 'config.json'), 'utf8')));
      expect({ ...cfg.spec, kvDtype: m.spec.kvDtype }).toEqual(m.spec);

      const full = await step(session, shape, [IDS], emptyPast(shape));
      const scale = Math.max(...Array.from(full.logits, Math.abs));
      expect(scale).toBeGreaterThan(0.05);
      const pre = await step(session, shape, [IDS.slice(0, 9)], emptyPast(shape));
      const mid = await step(session, shape, [IDS.slice(9, 15)], pre.present);
      const last = await step(session, shape, [IDS.slice(15)], mid.present);
      expect(maxAbsDiff(logitsAt(last, 1, 0, 0), logitsAt(full, IDS.length, 0, IDS.length - 1))).toBeLessThan(1e-5 * Math.max(1, scale));
      last.presentF32.forEach((kv, i) => expect(maxAbsDiff(kv, full.presentF32[i])).toBeLessThan(1e-5));

      // Layer 0's key of a lone token depends only on the token: at position p it is R(p)·k(0).
      const D = m.spec.headDim;
      const at = async (p: number) => (await step(session, shape, [[42]], emptyPast(shape), { positions: [[p]] })).presentF32[0];
      const k0 = await at(0);
      for (const p of [1, 37, 300]) {
        const kp = await at(p);
        for (let h = 0; h < m.spec.kvHeads; h++) {
          const want = rotate(k0.subarray(h * D, (h + 1) * D), p, m.spec.rope[0]!);
          expect(maxAbsDiff(kp.subarray(h * D, (h + 1) * D), want)).toBeLessThan(2e-5);
        }
      }
      await session.release();
    },
  );

  it('float16 KV: cache tensors are float16 and logits track the float32 model', async () => {
    const o = { heads: 4, kvHeads: 2, headDim: 16, hidden: 48, seed: 7, rope: { scaling: LLAMA3 } };
    const f16 = await build('f16', { ...o, kvDtype: 'float16' });
    const f32 = await build('f32', o);
    const a = await step(f16.session, f16.shape, [IDS], emptyPast(f16.shape));
    const b = await step(f32.session, f32.shape, [IDS], emptyPast(f32.shape));
    expect(a.present['past_key_values.0.key'].type).toBe('float16');
    expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(5e-3);
    const pre = await step(f16.session, f16.shape, [IDS.slice(0, 15)], emptyPast(f16.shape));
    const next = await step(f16.session, f16.shape, [IDS.slice(15)], pre.present);
    expect(maxAbsDiff(logitsAt(next, 1, 0, 0), logitsAt(a, IDS.length, 0, IDS.length - 1))).toBeLessThan(1e-5);
    await Promise.all([f16.session.release(), f32.session.release()]);
  });

  it('is deterministic in the seed', async () => {
    const o = { layers: 1, heads: 2, kvHeads: 1, headDim: 8, hidden: 16 };
    const files = async (name: string, seed: number) => {
      const m = await buildRandomLlama({ out: join(tmp, name), seed, ...o });
      return readFile(join(m.dir, 'onnx', 'model.onnx'));
    };
    const [a, b, c] = [await files('s1', 1), await files('s1b', 1), await files('s2', 2)];
    expect(Buffer.compare(a, b)).toBe(0);
    expect(Buffer.compare(a, c)).not.toBe(0);
  });

  it('refuses impossible shapes and existing directories', async () => {
    await expect(buildRandomLlama({ out: join(tmp, 'x'), heads: 4, kvHeads: 3 })).rejects.toThrow(/multiple of kvHeads/);
    await expect(buildRandomLlama({ out: join(tmp, 'x'), vocab: 100 })).rejects.toThrow(/512/);
    await buildRandomLlama({ out: join(tmp, 'dup'), layers: 1 });
    const err = await buildRandomLlama({ out: join(tmp, 'dup'), layers: 1 }).catch((e: unknown) => e);
    expect((err as KvtcError).code).toBe('OUTPUT_EXISTS');
  });
});

/** Singular values of W [rows, cols] (float32), descending: √ of the eigenvalues of the smaller Gram, W·Wᵀ or Wᵀ·W, in float64. */
function singularValues(W: Float32Array, rows: number, cols: number): Float64Array {
  const byRows = rows <= cols;
  const r = Math.min(rows, cols);
  const at = (i: number, j: number) => (byRows ? W[i * cols + j] : W[j * cols + i]); // [r, other]
  const other = byRows ? cols : rows;
  const G = new Float64Array(r * r);
  for (let i = 0; i < r; i++)
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let c = 0; c < other; c++) s += at(i, c) * at(j, c);
      G[i * r + j] = G[j * r + i] = s;
    }
  return symmetricEigen(G, r).values.map((v) => Math.sqrt(Math.max(v, 0)));
}

const sumSquares = (w: ArrayLike<number>) => Array.from(w).reduce((a, v) => a + v * v, 0);

describe('kvSpectrum', () => {
  it.each([
    // [rows (kvDim), cols (hidden), decay]
    [24, 40, 1],
    [48, 16, 0.5],
    [32, 32, 0.8],
    [20, 12, 0],
  ])(
    'spectralWeight [%i, %i], decay %s: singular values are the power law, Frobenius norm that of normal(0, std)',
    async (rows, cols, decay) => {
      const std = 0.1;
      const W = await spectralWeight(mulberry32(3), rows, cols, std, decay);
      expect(W.length).toBe(rows * cols);
      const want = powerLawSpectrum(rows, cols, std, decay);
      const got = singularValues(W, rows, cols);
      expect(got.length).toBe(want.length);
      for (let j = 0; j < want.length; j++) {
        expect(Math.abs(got[j] - want[j])).toBeLessThan(1e-5 * want[0]);
        expect(want[j] / want[0]).toBeCloseTo((j + 1) ** -decay, 12);
      }
      expect(sumSquares(W) / (rows * cols * std * std)).toBeCloseTo(1, 5);
    },
  );

  it('keeps the scale of the plain Gaussian weight it replaces', async () => {
    const [rows, cols, std] = [64, 128, 0.02];
    const plain = sumSquares(normals(mulberry32(5), rows * cols, std));
    const spectral = sumSquares(await spectralWeight(mulberry32(5), rows, cols, std, 1));
    // ‖G‖_F² of 8192 normal(0, std) draws is within a few percent of its mean rows·cols·std².
    expect(spectral / plain).toBeGreaterThan(0.95);
    expect(spectral / plain).toBeLessThan(1.05);
  });

  it('replaces only k_proj and v_proj, each layer its own; the rest is the plain draw', async () => {
    const shape: RandomWeightShape = { layers: 2, hidden: 32, heads: 4, kvHeads: 2, headDim: 8, intermediate: 64, vocab: 512, std: 0.02 };
    const plain = randomLlamaWeights(mulberry32(9), shape);
    const spec = await withKvSpectrum(randomLlamaWeights(mulberry32(9), shape), shape, { decay: 1 }, 9);
    expect(spec.embedTokens).toEqual(plain.embedTokens);
    for (let l = 0; l < shape.layers; l++) {
      const { kProj, vProj, ...rest } = spec.layers[l];
      const { kProj: k0, vProj: v0, ...rest0 } = plain.layers[l];
      expect(rest).toEqual(rest0);
      expect(kProj).not.toEqual(k0);
      expect(vProj).not.toEqual(v0);
      expect(vProj).not.toEqual(kProj);
      const s = singularValues(kProj, 16, 32);
      expect(s[0] / s[15]).toBeCloseTo(16, 3);
    }
    expect(spec.layers[1].kProj).not.toEqual(spec.layers[0].kProj);
  });

  it('off by default: the same bytes as before; on: different bytes, a working model', async () => {
    const o = { layers: 2, heads: 2, kvHeads: 1, headDim: 8, hidden: 16, seed: 4 };
    const bytes = async (name: string, extra: Partial<RandomLlamaOptions>) =>
      readFile(join((await buildRandomLlama({ out: join(tmp, name), ...o, ...extra })).dir, 'onnx', 'model.onnx'));
    const plain = await bytes('spec-plain', {});
    expect(Buffer.compare(await bytes('spec-undef', { kvSpectrum: undefined, attentionWindow: undefined }), plain)).toBe(0);
    expect(Buffer.compare(await bytes('spec-on', { kvSpectrum: { decay: 1 } }), plain)).not.toBe(0);
    const { session, shape } = await build('spec-run', { ...o, std: 0.15, kvSpectrum: { decay: 1 } });
    const full = await step(session, shape, [IDS], emptyPast(shape));
    expect(full.logits.every(Number.isFinite)).toBe(true);
    await session.release();
    await expect(buildRandomLlama({ out: join(tmp, 'bad-decay'), ...o, kvSpectrum: { decay: -1 } })).rejects.toThrow(/decay/);
  });
});

describe('attentionWindow', () => {
  it('a window of 4 changes only the logits of queries with more than 4 keys before them', async () => {
    const o = { layers: 2, heads: 2, kvHeads: 1, headDim: 8, hidden: 16, seed: 6 };
    const global = await build('aw-global', o);
    const local = await build('aw-local', { ...o, attentionWindow: [4, null] });
    const a = await step(global.session, global.shape, [IDS], emptyPast(global.shape));
    const b = await step(local.session, local.shape, [IDS], emptyPast(local.shape));
    const V = a.vocab;
    for (let i = 0; i < IDS.length; i++) {
      const d = maxAbsDiff(a.logits.subarray(i * V, (i + 1) * V), b.logits.subarray(i * V, (i + 1) * V));
      if (i < 4) expect(d).toBeLessThan(1e-6);
      else expect(d).toBeGreaterThan(1e-6);
    }
    // The cache keeps every token: the window masks attention only.
    expect(b.present['past_key_values.0.key'].dims[2]).toBe(IDS.length);
    await Promise.all([global.session.release(), local.session.release()]);
    await expect(buildRandomLlama({ out: join(tmp, 'aw-bad'), ...o, attentionWindow: [4] })).rejects.toThrow(/attentionWindow/);
  });
});

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildRandomLlama, type RandomLlamaOptions } from '../../src/convert/random-llama.js';
import { KvtcError } from '../../src/errors.js';
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

// A plan that groups layers with different RoPE (and a layer without any) un-rotates each layer
// with its own table: on the host (CPU path), in the ONNX graphs (CUDA path, run here on ORT's
// CPU provider) and in calibration's float64 features, and the three agree.
import { describe, expect, it } from 'vitest';
import { KvtcCodec } from '../../src/codec/codec.js';
import { buildDecodeGraph, buildEncodeGraph } from '../../src/codec/graphs.js';
import { gatherHeads, hostRope, scatterHeads } from '../../src/codec/host-kernels.js';
import type { BasisPlan } from '../../src/codec/types.js';
import { gatherFeatures } from '../../src/fit/features.js';
import type { KvCache } from '../../src/model/types.js';
import { createSession, ort } from '../../src/onnx/session.js';
import { cacheTables, planRope, tableInputNames } from '../../src/rope/codec-rope.js';
import { ropeInvFreq } from '../../src/rope/freqs.js';
import type { LayerRope, RopeSpec } from '../../src/rope/types.js';
import { rng } from '../codec/rng.js';

const L = 4,
  KV = 2,
  HD = 8,
  T = 37,
  START = 11;
const A: RopeSpec = { theta: 10000, rotaryDim: 8, layout: 'half' };
const B: RopeSpec = {
  theta: 500000,
  rotaryDim: 4,
  layout: 'interleaved',
  attentionFactor: 1.25,
  scaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 16, betaFast: 32, betaSlow: 1, truncate: true },
};
// layers 0 and 3 share A, layer 1 has no RoPE, layer 2 has B
const ROPE: LayerRope[] = [A, null, B, A];

/** Rotates one head vector the way transformers' apply_rotary_pos_emb does (written here, not kvtc's). */
function rotateRef(x: Float32Array, r: RopeSpec, pos: number): Float64Array {
  const out = Float64Array.from(x);
  const inv = ropeInvFreq(r, START + T);
  const f = r.attentionFactor ?? 1;
  const h = r.rotaryDim / 2;
  for (let i = 0; i < h; i++) {
    const [ia, ib] = r.layout === 'half' ? [i, i + h] : [2 * i, 2 * i + 1];
    const c = Math.cos(pos * inv[i]) * f;
    const s = Math.sin(pos * inv[i]) * f;
    out[ia] = x[ia] * c - x[ib] * s;
    out[ib] = x[ib] * c + x[ia] * s;
  }
  return out;
}

/** A cache whose pre-RoPE keys are `pre` (per layer [KV, T, HD]), rotated per layer as a model would. */
function makeCache(): { cache: KvCache; pre: Float32Array[] } {
  const { normal } = rng(5);
  const pre = Array.from({ length: L }, () => Float32Array.from({ length: KV * T * HD }, normal));
  const keys = pre.map((p, l) => {
    const r = ROPE[l];
    const k = new Float32Array(p.length);
    for (let h = 0; h < KV; h++)
      for (let t = 0; t < T; t++) {
        const o = (h * T + t) * HD;
        k.set(r ? rotateRef(p.subarray(o, o + HD), r, START + t) : p.subarray(o, o + HD), o);
      }
    return k;
  });
  const values = pre.map((p) => p.map((v) => v * 0.5));
  return { cache: { layers: L, kvHeads: KV, headDim: HD, tokens: T, dtype: 'float32', keys, values, startPosition: START }, pre };
}

function identityPlan(layers: number[]): BasisPlan {
  const p = layers.length * KV * HD;
  const basis = new Float32Array(p * p);
  for (let i = 0; i < p; i++) basis[i * p + i] = 1;
  return {
    kind: 'key',
    layers,
    dim: p,
    rank: p,
    mean: new Float32Array(p),
    basis,
    variances: new Float32Array(p).fill(1),
    groups: [{ start: 0, end: p, type: 'int8', mode: 'dynamic' }],
    lo: new Float32Array(p),
    hi: new Float32Array(p),
  };
}

const maxAbs = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

describe('per-layer RoPE in one plan', () => {
  const { cache, pre } = makeCache();
  const layers = [0, 1, 2, 3];
  const plan = identityPlan(layers);
  const pr = planRope(ROPE, layers);

  it('planRope splits the plan into runs of layers and one table per distinct RoPE', () => {
    expect(pr.ropes).toEqual([A, B]);
    expect(pr.segments.map((s) => [s.li0, s.li1, s.table])).toEqual([
      [0, 1, 0],
      [1, 2, -1],
      [2, 3, 1],
      [3, 4, 0],
    ]);
    expect(tableInputNames(pr, 1)).toEqual({ cos: 'cos_1', sin: 'sin_1' });
    expect(tableInputNames(planRope([A, A], [0, 1]), 0)).toEqual({ cos: 'cos', sin: 'sin' });
  });

  it('calibration features un-rotate each layer with its own RoPE (pre-RoPE keys back, ≤ 1e-5)', () => {
    const X = gatherFeatures(cache, { kind: 'key', layers }, ROPE);
    for (let li = 0; li < L; li++)
      for (let h = 0; h < KV; h++)
        for (let t = 0; t < T; t++) {
          const got = X.subarray(t * plan.dim + (li * KV + h) * HD, t * plan.dim + (li * KV + h + 1) * HD);
          const want = pre[li].subarray((h * T + t) * HD, (h * T + t + 1) * HD);
          expect(maxAbs(got, want)).toBeLessThan(1e-5);
        }
  });

  it('host kernels and the ONNX graphs give the same un-rotated keys, and decode re-rotates them', async () => {
    const tables = cacheTables(pr.ropes, START, T, START + T);
    const byTable = tables.map((t) => hostRope(t.rope, HD, t.undo));
    const host = layers.map((_, li) => {
      const seg = pr.segments.find((s) => li >= s.li0 && li < s.li1)!;
      return seg.table < 0 ? undefined : byTable[seg.table];
    });
    const x = new Float32Array(T * plan.dim);
    const norms = new Float64Array(T);
    gatherHeads(cache.keys, layers, KV, HD, T, 0, T, x, host, norms);
    // the range check's sums are the un-rotated keys' squares (÷ f² on layer 2's rotated dims)
    for (let t = 0; t < T; t++) {
      let want = 0;
      for (let l = 0; l < L; l++) for (let h = 0; h < KV; h++) for (let d = 0; d < HD; d++) want += pre[l][(h * T + t) * HD + d] ** 2;
      expect(Math.abs(norms[t] - want)).toBeLessThan(1e-5 * want);
    }
    // host [G, n, hd] equals the pre-RoPE keys
    layers.forEach((l, li) => expect(maxAbs(x.subarray(li * KV * T * HD, (li + 1) * KV * T * HD), pre[l])).toBeLessThan(1e-5));

    const raw = new Float32Array(T * plan.dim);
    layers.forEach((l, li) => raw.set(cache.keys[l], li * KV * T * HD));
    const feeds: Record<string, ort.Tensor> = { x: new ort.Tensor('float32', raw, [L * KV, T, HD]) };
    tables.forEach((t, j) => {
      const n = tableInputNames(pr, j);
      feeds[n.cos] = new ort.Tensor('float32', t.undo.cos, [T, t.undo.cos.length / T]);
      feeds[n.sin] = new ort.Tensor('float32', t.undo.sin, [T, t.undo.sin.length / T]);
    });
    const enc = await createSession(buildEncodeGraph(plan, { headDim: HD, rope: ROPE }));
    const coeffs = (await enc.run(feeds)).coeffs.data as Float32Array; // [p, n], identity basis
    await enc.release();
    // the graph's float32 products and sums are the host's: the same bits
    for (let g = 0; g < L * KV; g++)
      for (let t = 0; t < T; t++)
        for (let d = 0; d < HD; d++) {
          expect(coeffs[(g * HD + d) * T + t]).toBe(x[(g * T + t) * HD + d]);
        }

    const dfeeds: Record<string, ort.Tensor> = { coeffs: new ort.Tensor('float32', coeffs, [plan.dim, T]) };
    tables.forEach((t, j) => {
      const n = tableInputNames(pr, j);
      dfeeds[n.cos] = new ort.Tensor('float32', t.apply.cos, [T, t.apply.cos.length / T]);
      dfeeds[n.sin] = new ort.Tensor('float32', t.apply.sin, [T, t.apply.sin.length / T]);
    });
    const dec = await createSession(buildDecodeGraph(plan, { headDim: HD, rope: ROPE }));
    const back = (await dec.run(dfeeds)).x.data as Float32Array; // [G, n, hd]
    await dec.release();
    layers.forEach((l, li) => expect(maxAbs(back.subarray(li * KV * T * HD, (li + 1) * KV * T * HD), cache.keys[l])).toBeLessThan(1e-5));
    // host scatter of the same reconstruction
    const hostApply = tables.map((t) => hostRope(t.rope, HD, t.apply));
    const hostA = layers.map((_, li) => {
      const seg = pr.segments.find((s) => li >= s.li0 && li < s.li1)!;
      return seg.table < 0 ? undefined : hostApply[seg.table];
    });
    const dst = layers.map(() => new Float32Array(KV * T * HD));
    scatterHeads(x, dst, layers, KV, HD, T, 0, T, hostA);
    for (let li = 0; li < L; li++) expect(maxAbs(dst[li], back.subarray(li * KV * T * HD, (li + 1) * KV * T * HD))).toBe(0);
  });

  it('the codec round-trips a cache whose plan mixes RoPE, NoPE and an attention factor', async () => {
    const codec = await KvtcCodec.create(
      { layers: L, kvHeads: KV, headDim: HD, rope: ROPE, profileId: '0123456789abcdef', sink: 2, window: 3, entropy: 'deflate-default' },
      [plan, { ...identityPlan(layers), kind: 'value' }],
    );
    try {
      const { blob } = await codec.encode(cache);
      const { cache: out } = await codec.decode(blob);
      for (let l = 0; l < L; l++) {
        let num = 0,
          den = 0;
        for (let i = 0; i < cache.keys[l].length; i++) {
          num += (out.keys[l][i] - cache.keys[l][i]) ** 2;
          den += cache.keys[l][i] ** 2;
        }
        expect(Math.sqrt(num / den)).toBeLessThan(0.02); // int8 per token
      }
    } finally {
      await codec.release();
    }
  });

  it('refuses RoPE for a different number of layers', async () => {
    await expect(
      KvtcCodec.create(
        { layers: L, kvHeads: KV, headDim: HD, rope: [A], profileId: '0123456789abcdef', sink: 0, window: 0, entropy: 'stored' },
        [plan],
      ),
    ).rejects.toThrow(/RoPE for 1 layers but 4 layers/);
  });
});

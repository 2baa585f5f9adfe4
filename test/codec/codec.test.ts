import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { KvtcCodec } from '../../src/codec/codec.js';
import { gatherFeatures } from '../../src/fit/features.js';
import { projectCoefficients, reconstruct } from '../fit/fit-reference.js';
import { applyRope } from '../rope/rope-reference.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache } from '../../src/model/types.js';
import type { BasisPlan, QuantGroup } from '../../src/codec/types.js';
import { createSession, ort } from '../../src/onnx/session.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile, type Profile } from '../../src/profile/read.js';
import { buildDecodeGraph, buildEncodeGraph, ropeTables } from '../../src/codec/graphs.js';
import { ropeInvFreq } from '../../src/rope/freqs.js';
import { floatArrayToHalf, halfArrayToFloat } from '../../src/io/fp16.js';
import { quantizeStored, storedComponents, toStoredComponentMajor } from '../../src/codec/payload.js';
import { dequantizeStored } from './payload-reference.js';

const PROFILE = `${DEFAULT_PROFILES_DIR}/stories260k`;

let profile: Profile;
let codec: KvtcCodec;
let cache: KvCache; // held-out text: WikiText-2 test, never used for calibration

function relError(a: Float32Array, b: Float32Array): number {
  let n = 0;
  let d = 0;
  for (let i = 0; i < a.length; i++) {
    n += (a[i] - b[i]) ** 2;
    d += a[i] ** 2;
  }
  return Math.sqrt(n / d);
}

beforeAll(async () => {
  profile = await readProfile(PROFILE);
  codec = await codecFromProfile(profile);
  const model = await loadModel(DEFAULT_MODEL_DIR);
  const text = readFileSync(WIKITEXT_TEST, 'utf8').slice(0, 20_000);
  cache = (await new ModelRunner(model).capture(text, { maxTokens: 512 })).cache;
});

describe('KvtcCodec on stories260K (bundled profile, held-out WikiText-2 text)', () => {
  it('hits the target ratio on the compressed tokens and reports the whole-blob ratio beside it', async () => {
    const { stats } = await codec.encode(cache);
    expect(stats.compressedTokens).toBe(512 - 4 - 128);
    expect(Math.abs(stats.ratioCompressed / profile.manifest.settings.ratio_target - 1)).toBeLessThan(0.1);
    expect(stats.ratioBlob).toBeGreaterThan(1);
    expect(stats.ratioBlob).toBeLessThan(stats.ratioCompressed);
  });

  it('encode and decode are deterministic: identical blobs, bit-identical decodes', async () => {
    const a = await codec.encode(cache);
    const b = await codec.encode(cache);
    expect(Buffer.from(a.blob).equals(Buffer.from(b.blob))).toBe(true);
    const x = await codec.decode(a.blob);
    const y = await codec.decode(a.blob);
    expectBitIdentical(x.cache, y.cache);
  });

  it('restores sink and window tokens as their exact fp16 values and compressed tokens approximately', async () => {
    const { blob } = await codec.encode(cache);
    const { cache: back } = await codec.decode(blob);
    const { kvHeads, headDim, tokens } = cache;
    for (let l = 0; l < cache.layers; l++) {
      for (let h = 0; h < kvHeads; h++) {
        const base = h * tokens * headDim;
        for (const [t0, t1] of [
          [0, 4],
          [tokens - 128, tokens],
        ]) {
          expect(back.keys[l].subarray(base + t0 * headDim, base + t1 * headDim)).toEqual(
            asFp16(cache.keys[l].subarray(base + t0 * headDim, base + t1 * headDim)),
          );
          expect(back.values[l].subarray(base + t0 * headDim, base + t1 * headDim)).toEqual(
            asFp16(cache.values[l].subarray(base + t0 * headDim, base + t1 * headDim)),
          );
        }
      }
      const ek = relError(cache.keys[l], back.keys[l]);
      expect(ek).toBeGreaterThan(0);
      expect(ek).toBeLessThan(0.3);
      expect(relError(cache.values[l], back.values[l])).toBeLessThan(0.9);
    }
  });

  it('running the graphs on a worker thread gives the same bits as running them inline', async () => {
    const threaded = await codecFromProfile(profile, { transformThread: true });
    try {
      await expectSameBits(codec, threaded);
    } finally {
      await threaded.release();
    }
  });

  it('a cache no longer than sink + window is stored raw (fp16) and restored exactly', async () => {
    const short: KvCache = {
      ...cache,
      tokens: 100,
      keys: cache.keys.map((k) => slice(k, cache, 100)),
      values: cache.values.map((v) => slice(v, cache, 100)),
    };
    const { blob, stats } = await codec.encode(short);
    expect(stats.compressedTokens).toBe(0);
    expect(Number.isNaN(stats.ratioCompressed)).toBe(true);
    const { cache: back } = await codec.decode(blob);
    for (let l = 0; l < short.layers; l++) expect(back.keys[l]).toEqual(asFp16(short.keys[l]));
  });

  it('corrupt, truncated and foreign blobs fail with clear errors', async () => {
    const { blob } = await codec.encode(cache);
    const flipped = blob.slice();
    flipped[200] ^= 0xff;
    await expect(codec.decode(flipped, 'x.kvtc')).rejects.toMatchObject({
      code: 'BLOB_INVALID',
      message: expect.stringContaining('checksum'),
    });
    await expect(codec.decode(blob.slice(0, blob.length - 10), 'x.kvtc')).rejects.toMatchObject({ code: 'BLOB_INVALID' });
    await expect(
      codec.decode(new TextEncoder().encode('not a blob at all, just some text padding padding padding'), 'x.kvtc'),
    ).rejects.toMatchObject({ code: 'BLOB_INVALID', message: expect.stringContaining('magic') });
    const other = await KvtcCodec.create({ ...codec.spec, profileId: 'ffffffffffffffff' }, profile.plans);
    await expect(other.decode(blob, 'x.kvtc')).rejects.toMatchObject({ code: 'BLOB_MISMATCH' });
    await other.release();
  });

  it('rejects a cache of another shape', async () => {
    const wrong: KvCache = { ...cache, kvHeads: 2 };
    await expect(codec.encode(wrong)).rejects.toMatchObject({ code: 'PROFILE_MISMATCH' });
  });
});

/** Every key and value of two caches, byte for byte. */
function expectBitIdentical(a: KvCache, b: KvCache): void {
  for (let l = 0; l < a.layers; l++) {
    expect(Buffer.from(a.keys[l].buffer).equals(Buffer.from(b.keys[l].buffer))).toBe(true);
    expect(Buffer.from(a.values[l].buffer).equals(Buffer.from(b.values[l].buffer))).toBe(true);
  }
}

/** Inline and threaded codecs give the same blob for `cache` and bit-identical decodes; returns the decode. */
async function expectSameBits(inline: KvtcCodec, threaded: KvtcCodec): Promise<KvCache> {
  const a = await inline.encode(cache);
  const b = await threaded.encode(cache);
  expect(Buffer.from(b.blob).equals(Buffer.from(a.blob))).toBe(true);
  const x = await inline.decode(a.blob);
  const y = await threaded.decode(a.blob);
  expectBitIdentical(y.cache, x.cache);
  return x.cache;
}

/** The values an fp16 copy holds (the raw section stores fp16). */
function asFp16(a: Float32Array): Float32Array {
  return halfArrayToFloat(floatArrayToHalf(a));
}

function slice(a: Float32Array, c: KvCache, n: number): Float32Array {
  const out = new Float32Array(c.kvHeads * n * c.headDim);
  for (let h = 0; h < c.kvHeads; h++) out.set(a.subarray(h * c.tokens * c.headDim, (h * c.tokens + n) * c.headDim), h * n * c.headDim);
  return out;
}

/**
 * The plan with its components regrouped to cover every coding path of the graphs and the payload:
 * dynamic int8, static fp8, a dropped component, dynamic fp8, static int2/int4 (the profile's
 * static ranges are reused).
 */
function mixedGroups(plan: BasisPlan): BasisPlan {
  const spans: [number, QuantGroup['type'], QuantGroup['mode']][] = [
    [2, 'int8', 'dynamic'],
    [2, 'fp8', 'static'],
    [1, 'none', 'static'],
    [2, 'fp8', 'dynamic'],
    [2, 'int2', 'static'],
    [Infinity, 'int4', 'static'],
  ];
  const groups: QuantGroup[] = [];
  let at = 0;
  for (const [w, type, mode] of spans) {
    if (at >= plan.rank) break;
    const end = Math.min(plan.rank, at + w);
    groups.push({ start: at, end, type, mode });
    at = end;
  }
  return { ...plan, groups };
}

describe('codec ONNX graphs against the plain TypeScript reference', () => {
  it('a codec whose plans mix every group type and mode: inline and threaded give the same bits, and the error stays bounded', async () => {
    const plans = profile.plans.map(mixedGroups);
    const inline = await KvtcCodec.create(codec.spec, plans);
    const threaded = await KvtcCodec.create(codec.spec, plans, { transformThread: true });
    try {
      const x = await expectSameBits(inline, threaded);
      // More bits than the profile's own allocation on the leading components: error well under 1.
      for (let l = 0; l < cache.layers; l++) expect(relError(cache.values[l], x.values[l])).toBeLessThan(0.6);
    } finally {
      await inline.release();
      await threaded.release();
    }
  });

  it('encode graph = un-rotate + (x − μ)·Vₛ, decode graph = cᵀ·Vₛᵀ + μ + re-rotate, over the stored components (max abs diff ≤ 1e-4)', async () => {
    const spec = codec.spec;
    const n = cache.tokens;
    const hd = spec.headDim;
    const tables = ropeTables(ropeInvFreq(spec.rope[0]!), 0, n);
    for (const plan of [...profile.plans, ...profile.plans.map(mixedGroups)]) {
      if (plan.rank === 0) continue;
      const ctx = { rope: spec.rope, headDim: hd };
      const enc = await createSession(buildEncodeGraph(plan, ctx));
      const dec = await createSession(buildDecodeGraph(plan, ctx));
      const G = plan.dim / hd;
      // Reference: features with RoPE removed in TypeScript (float64 angles), then project on all r
      // components; the graphs compute only the stored ones, component-major.
      const X = gatherFeatures(cache, { kind: plan.kind, layers: plan.layers }, spec.rope, 0, n);
      const full = projectCoefficients(X, plan.mean, plan.basis, plan.rank);
      const ref = toStoredComponentMajor(full, n, plan);
      const k = ref.length / n;
      expect(k).toBeGreaterThan(0);
      // Graph input: the cache's own [G, n, hd] layout (each layer's [kvHeads, tokens, hd], in plan order).
      const src = plan.kind === 'key' ? cache.keys : cache.values;
      const raw = new Float32Array(G * n * hd);
      plan.layers.forEach((l, li) => raw.set(src[l], li * spec.kvHeads * n * hd));
      const rot: Record<string, ort.Tensor> = {};
      if (plan.kind === 'key') {
        rot.cos = new ort.Tensor('float32', tables.cos, [n, tables.cos.length / n]);
        rot.sin = new ort.Tensor('float32', tables.sin, [n, tables.sin.length / n]);
      }
      // Encode: the graph quantizes the static int components itself (codes) and returns the
      // others as coefficients; compare with the host quantization of the reference coefficients.
      const out = await enc.run({ x: new ort.Tensor('float32', raw, [G, n, hd]), ...rot });
      const want = quantizeStored(ref, n, plan);
      const gotCodes = (out.codes?.data as Uint8Array | undefined) ?? new Uint8Array(0);
      const gotCoeffs = (out.coeffs?.data as Float32Array | undefined) ?? new Float32Array(0);
      expect(gotCodes.length).toBe(want.codes.length);
      expect(gotCoeffs.length).toBe(want.coeffs.length);
      expect(gotCodes.length + gotCoeffs.length).toBe(k * n);
      // float32 graph vs float64 reference: a code may differ by one step where the coefficient
      // sits on a rounding boundary, and rarely.
      let off = 0;
      for (let i = 0; i < gotCodes.length; i++) {
        const d = Math.abs(gotCodes[i] - want.codes[i]);
        expect(d).toBeLessThanOrEqual(1);
        off += d;
      }
      expect(off).toBeLessThanOrEqual(Math.max(2, gotCodes.length * 1e-3));
      let worst = 0;
      for (let i = 0; i < gotCoeffs.length; i++) worst = Math.max(worst, Math.abs(want.coeffs[i] - gotCoeffs[i]));
      expect(worst).toBeLessThan(1e-4);

      // Decode: reference reconstruction from the dequantized stored components only (dropped
      // ones zeroed), then RoPE re-applied on the [G, tokens, headDim] layout.
      const stored = storedComponents(plan);
      const deq = dequantizeStored(want, n, plan);
      const kept = new Float32Array(n * plan.rank);
      stored.forEach((c, j) => {
        for (let t = 0; t < n; t++) kept[t * plan.rank + c] = deq[j * n + t];
      });
      const xr = reconstruct(kept, plan.mean, plan.basis, plan.rank, n);
      const feeds: Record<string, ort.Tensor> = { ...rot };
      if (want.codes.length) feeds.codes = new ort.Tensor('uint8', want.codes, [want.codes.length / n, n]);
      if (want.coeffs.length) feeds.coeffs = new ort.Tensor('float32', want.coeffs, [want.coeffs.length / n, n]);
      const back = (await dec.run(feeds)).x.data as Float32Array;
      const cacheLayout = new Float32Array(G * n * hd);
      for (let t = 0; t < n; t++)
        for (let g = 0; g < G; g++) cacheLayout.set(xr.subarray(t * plan.dim + g * hd, t * plan.dim + (g + 1) * hd), (g * n + t) * hd);
      if (plan.kind === 'key') applyRope(cacheLayout, G, n, hd, spec.rope[0]!, 0);
      worst = 0;
      for (let i = 0; i < cacheLayout.length; i++) worst = Math.max(worst, Math.abs(back[i] - cacheLayout[i]));
      expect(worst).toBeLessThan(1e-4);
      await enc.release();
      await dec.release();
    }
  });
});

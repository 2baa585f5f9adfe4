// Tested by test/codec/codec.test.ts, test/codec/blob-fuzz.test.ts and test/acceptance/pinned-bytes.test.ts.
/**
 * The decode pipeline: parseBlob bounds the untrusted blob before anything is allocated, the raw
 * section is restored, and each plan's payload is unpacked and reconstructed by its graph; the
 * decode graph writes [G, n, hd], so values are block copies into the cache and keys one RoPE pass.
 */
import { invariant } from '../errors.js';
import { valueDimOf, type KvCache } from '../model/types.js';
import { parseBlob } from './blob.js';
import { type CodecParts, now, planHeadDim } from './codec-parts.js';
import { cacheTables, type CacheTables, type PlanRope, tableInputNames } from '../rope/codec-rope.js';
import { hostRope, type PlanHostRope, saturateHalf, scatterHeads } from './host-kernels.js';
import { decodePlanCodes } from './payload.js';
import { restoreRaw } from './raw-section.js';
import type { Feeds, Outputs } from './transform.js';
import type { BasisPlan } from './types.js';

export interface DecodeStats {
  tokens: number;
  /** As EncodeStats: transform = the graphs (static dequantization is folded into them); dequantize = host unpacking and the dynamic and fp8 groups. */
  seconds: { inflate: number; dequantize: number; transform: number; scatter: number; total: number };
}

/**
 * Decodes a blob of this profile. The blob is untrusted: parseBlob checks every header and table
 * field against the file and the profile before anything is allocated, and the values decoded
 * are finite (a non-finite raw value, fp16 scale or offset, or a NaN fp8 code is BLOB_INVALID).
 */
export async function decodeBlob(c: CodecParts, blob: Uint8Array, source: string): Promise<{ cache: KvCache; stats: DecodeStats }> {
  const t0 = now();
  const { header, raw, plans: payloads } = parseBlob(blob, c.layout, source);
  const sec = { inflate: now() - t0, dequantize: 0, transform: 0, scatter: 0, total: 0 };
  const { layers, kvHeads, headDim, tokens, sink, window } = header;
  const n = tokens - sink - window;
  // Values are [kvHeads, tokens, valueDim]: the profile's width (the header holds only the key width).
  const valueDim = valueDimOf(c.spec);
  const cache: KvCache = {
    layers,
    kvHeads,
    headDim,
    ...(c.spec.valueDim !== undefined ? { valueDim } : {}),
    tokens,
    dtype: header.fp16 ? 'float16' : 'float32',
    startPosition: header.startPosition,
    keys: Array.from({ length: layers }, () => new Float32Array(kvHeads * tokens * headDim)),
    values: Array.from({ length: layers }, () => new Float32Array(kvHeads * tokens * valueDim)),
  };
  restoreRaw(raw, cache, sink, window, header.rawFloat32, source);
  if (n > 0) {
    // apply tables of each distinct layer RoPE for tokens [sink, sink + n), as the encoder's
    const memo = new Map<string, CacheTables>();
    const seqLen = header.startPosition + tokens;
    const tablesOf = (i: number) =>
      c.plans[i].kind === 'key' ? cacheTables(c.planRopes[i].ropes, header.startPosition + sink, n, seqLen, memo) : [];
    const hostOf = (pr: PlanRope, plan: BasisPlan, tables: CacheTables[]): PlanHostRope => {
      if (!tables.length) return undefined;
      const byTable = tables.map((t) => hostRope(t.rope, headDim, t.apply));
      return plan.layers.map((_, li) => {
        const seg = pr.segments.find((sg) => li >= sg.li0 && li < sg.li1)!;
        return seg.table < 0 ? undefined : byTable[seg.table];
      });
    };
    const scatter = (plan: BasisPlan, x: Float32Array, r: PlanHostRope) => {
      const t = now();
      const hd = planHeadDim(c.spec, plan);
      scatterHeads(x, plan.kind === 'key' ? cache.keys : cache.values, plan.layers, kvHeads, hd, tokens, sink, n, r);
      sec.scatter += now() - t;
    };
    // Phase 1 dequantizes every basis and submits its reconstruction; phase 2 scatters each as
    // it arrives. Threaded, the reconstructions run while dequantization continues; inline, each
    // is scattered at once and one codes buffer is reused.
    const pending: { plan: BasisPlan; x: Promise<Outputs>; host: PlanHostRope }[] = [];
    for (let i = 0; i < c.plans.length; i++) {
      const plan = c.plans[i];
      const tables = tablesOf(i);
      if (plan.rank === 0) {
        // no graph: the mean is re-rotated on the host whatever the device
        scatter(plan, meanReconstruction(plan, n, planHeadDim(c.spec, plan)), hostOf(c.planRopes[i], plan, tables));
        continue;
      }
      const host = c.ropeOnHost ? hostOf(c.planRopes[i], plan, tables) : undefined;
      let t = now();
      const payload = payloads.get(i);
      invariant(payload, `parseBlob returned no section for plan ${i}`);
      const pc = decodePlanCodes(payload, n, plan, source, codesBuffer(c, n * plan.rank), { plan: i, firstToken: sink, source });
      sec.dequantize += now() - t;
      t = now();
      const feeds: Feeds = {};
      if (pc.codes.length) feeds.codes = { data: pc.codes, dims: [pc.codes.length / n, n] };
      if (pc.coeffs.length) feeds.coeffs = { data: pc.coeffs, dims: [pc.coeffs.length / n, n] };
      if (!c.ropeOnHost) {
        tables.forEach((tb, j) => {
          const names = tableInputNames(c.planRopes[i], j);
          feeds[names.cos] = { data: tb.apply.cos, dims: [n, tb.apply.cos.length / n] };
          feeds[names.sin] = { data: tb.apply.sin, dims: [n, tb.apply.sin.length / n] };
        });
      }
      const run = c.transform.run('decode', i, feeds);
      if (c.threaded) pending.push({ plan, x: run, host });
      else {
        const x = (await run).x as Float32Array;
        sec.transform += now() - t;
        scatter(plan, x, host);
      }
    }
    for (const { plan, x: p, host } of pending) {
      const t = now();
      const x = (await p).x as Float32Array;
      sec.transform += now() - t;
      scatter(plan, x, host);
    }
    // A float16 cache is restored as float16: reconstructions beyond its range saturate at
    // ±65504 (the nearest value it holds) instead of becoming ∞ when rounded.
    if (header.fp16) {
      for (const a of cache.keys) saturateHalf(a, kvHeads, tokens, headDim, sink, n);
      for (const a of cache.values) saturateHalf(a, kvHeads, tokens, valueDim, sink, n);
    }
  }
  sec.total = now() - t0;
  return { cache, stats: { tokens, seconds: sec } };
}

/** A rank-0 plan drops every component: its reconstruction is the mean, X [G, n, headDim] (keys are re-rotated per token by the caller). */
function meanReconstruction(plan: BasisPlan, n: number, headDim: number): Float32Array {
  const x = new Float32Array(n * plan.dim);
  for (let g = 0; g < plan.dim / headDim; g++) {
    const m = plan.mean.subarray(g * headDim, (g + 1) * headDim);
    for (let k = 0; k < n; k++) x.set(m, (g * n + k) * headDim);
  }
  return x;
}

/** Inline, the graph has run before the next plan is decoded: one reused codes buffer. Threaded: a fresh one (undefined). */
function codesBuffer(c: CodecParts, size: number): Uint8Array | undefined {
  if (c.threaded) return undefined;
  if (c.scratch.codes.length < size) c.scratch.codes = new Uint8Array(size);
  return c.scratch.codes;
}

// Test-only (issue 22): a kvtc encoder whose every float operation is plain JavaScript, so the blob
// it writes for given inputs is the same on every CPU (IEEE 754 doubles and Math.fround; V8 never
// fuses a multiply-add). It is kvtc's encode pipeline (src/codec/encode.ts) with its one ONNX
// Runtime step — the encode graph of src/codec/graphs.ts, (x − μ)·Vₛ and the static quantization —
// replaced by an emulation of what that graph computes on x86 MLAS, and the host stages (RoPE
// undo, gather, fp16 raw section, bit packing, DEFLATE, container) taken from kvtc itself.
import type { BasisPlan } from '../../src/codec/types.js';
import { assembleBlob, compressSection, type EncodedSection, type EntropyCoder } from '../../src/codec/blob.js';
import { splitTokens } from '../../src/codec/codec-parts.js';
import { gatherHeads, hostRope, type PlanHostRope } from '../../src/codec/host-kernels.js';
import { encodePlanCodes, splitStored } from '../../src/codec/payload.js';
import { rawSection } from '../../src/codec/raw-section.js';
import type { KvCache } from '../../src/model/types.js';
import { ropeFromManifest } from '../../src/profile/codec-from-profile.js';
import type { Profile } from '../../src/profile/read.js';
import { cacheTables, planRope, type CacheTables } from '../../src/rope/codec-rope.js';

const f = Math.fround;

/**
 * C [M, N] = A [M, K] · Bᵀ (B [N, K]) (+ bias [M]) in float32, summed in the order of ONNX Runtime's
 * x86 MLAS SGEMM (the order python/kvtc/codec.py's kvtc_sgemm emulates): K is walked in blocks of
 * StrideK (128, halved while half still covers K when N ≥ K, doubled while N is small), each block
 * summed from zero with one fused multiply-add per term, then added to the output (the bias, or the
 * blocks before it) with one float32 addition. A fused multiply-add is emulated in doubles: the
 * product of two float32 values is exact in a double, and the double sum rounded to float32 is the
 * FMA result except for ties of probability ~2^-29 (double rounding).
 */
export function mlasGemmABt(A: Float32Array, B: Float32Array, M: number, N: number, K: number, bias?: Float32Array): Float32Array {
  let strideN = 128;
  let strideK = 128;
  if (N >= K) {
    while (strideK / 2 >= K) {
      strideN *= 2;
      strideK /= 2;
    }
  } else {
    while (strideN > 16 && strideN / 2 >= N) {
      strideK *= 2;
      strideN /= 2;
    }
  }
  const C = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let j = 0; j < N; j++) {
      let c = bias ? bias[m] : 0;
      for (let k0 = 0; k0 < K; k0 += strideK) {
        let acc = 0;
        for (let k = k0; k < Math.min(K, k0 + strideK); k++) acc = f(acc + A[m * K + k] * B[j * K + k]);
        c = bias || k0 > 0 ? f(c + acc) : acc;
      }
      C[m * N + j] = c;
    }
  }
  return C;
}

/** The same product summed in float64 and rounded once: another valid order, as another CPU's kernels may use. */
function float64GemmABt(A: Float32Array, B: Float32Array, M: number, N: number, K: number, bias?: Float32Array): Float32Array {
  const C = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let j = 0; j < N; j++) {
      let s = bias ? bias[m] : 0;
      for (let k = 0; k < K; k++) s += A[m * K + k] * B[j * K + k];
      C[m * N + j] = s;
    }
  }
  return C;
}

/** Summation order of the emulated graph: x86 MLAS's (default), or float64 (a stand-in for another CPU). */
export type SumOrder = 'mlas' | 'float64';

const gemmABt = (order: SumOrder) => (order === 'float64' ? float64GemmABt : mlasGemmABt);

/** Basis columns `idx` as rows, each scaled: out[j, i] = basis[i, idx[j]] · scale(j) in float32 → [k, p] (graphs.ts columnsT). */
function columnsT(plan: BasisPlan, idx: Int32Array, scale?: (j: number) => number): Float32Array {
  const out = new Float32Array(idx.length * plan.dim);
  for (let j = 0; j < idx.length; j++) {
    const s = scale ? scale(j) : 1;
    for (let i = 0; i < plan.dim; i++) out[j * plan.dim + i] = plan.basis[i * plan.rank + idx[j]] * s;
  }
  return out;
}

/**
 * What the encode graph computes for x [G, n, hd] (RoPE already undone on the host): rows [n, p] =
 * x − μ (float32 Sub, per head), then codes [kA, n] = uint8(clamp(⌊(Vₐ/s)ᵀ·rowsᵀ + (½ − o/s)⌋, 0,
 * levels)) and coeffs [kB, n] = V_bᵀ·rowsᵀ.
 */
export function referenceEncodeGraph(
  plan: BasisPlan,
  x: Float32Array,
  n: number,
  hd: number,
  order: SumOrder = 'mlas',
): { codes: Uint8Array; coeffs: Float32Array } {
  const p = plan.dim;
  const G = p / hd;
  const rows = new Float32Array(n * p);
  for (let g = 0; g < G; g++)
    for (let t = 0; t < n; t++) for (let d = 0; d < hd; d++) rows[t * p + g * hd + d] = f(x[(g * n + t) * hd + d] - plan.mean[g * hd + d]);
  const sp = splitStored(plan);
  const kA = sp.affine.length;
  const kB = sp.other.length;
  let codes = new Uint8Array(0);
  if (kA > 0) {
    const inv = (j: number) => (sp.scale[j] > 0 ? 1 / sp.scale[j] : 0);
    const bias = Float32Array.from({ length: kA }, (_, j) => 0.5 - sp.offset[j] * inv(j));
    const u = gemmABt(order)(columnsT(plan, sp.affine, inv), rows, kA, n, p, bias);
    codes = new Uint8Array(kA * n);
    for (let j = 0; j < kA; j++)
      for (let t = 0; t < n; t++) codes[j * n + t] = Math.max(0, Math.min(Math.floor(u[j * n + t]), f(sp.levels[j])));
  }
  const coeffs = kB > 0 ? gemmABt(order)(columnsT(plan, sp.other), rows, kB, n, p) : new Float32Array(0);
  return { codes, coeffs };
}

/**
 * The blob kvtc's CPU encode writes for `cache` with `profile`, computed without ONNX Runtime
 * ('float64': the projections summed in another order, for testing tolerances).
 */
export function referenceEncode(profile: Profile, cache: KvCache, order: SumOrder = 'mlas'): Uint8Array {
  const m = profile.manifest;
  const spec = { sink: m.settings.sink, window: m.settings.window };
  const rope = ropeFromManifest(m);
  const { sink, window, n } = splitTokens(spec, cache.tokens);
  const raw = rawSection(cache, sink, window, 'reference');
  const sections: EncodedSection[] = [compressSection('raw', 0, raw.data, 'stored')];
  const memo = new Map<string, CacheTables>();
  const norms = new Float64Array(n);
  for (const [i, plan] of profile.plans.entries()) {
    if (plan.rank === 0 || n === 0) continue;
    const pr = planRope(rope, plan.layers);
    const tables =
      plan.kind === 'key' ? cacheTables(pr.ropes, cache.startPosition + sink, n, cache.startPosition + cache.tokens, memo) : [];
    let host: PlanHostRope;
    if (tables.length) {
      const byTable = tables.map((t) => hostRope(t.rope, cache.headDim, t.undo));
      host = plan.layers.map((_, li) => {
        const seg = pr.segments.find((s) => li >= s.li0 && li < s.li1)!;
        return seg.table < 0 ? undefined : byTable[seg.table];
      });
    }
    const x = new Float32Array(n * plan.dim);
    gatherHeads(
      plan.kind === 'key' ? cache.keys : cache.values,
      plan.layers,
      cache.kvHeads,
      cache.headDim,
      cache.tokens,
      sink,
      n,
      x,
      host,
      norms,
    );
    const payload = encodePlanCodes(referenceEncodeGraph(plan, x, n, cache.headDim, order), n, plan, {
      plan: i,
      firstToken: sink,
      source: 'reference',
    });
    sections.push(compressSection('plan', i, payload, m.settings.entropy as EntropyCoder));
  }
  return assembleBlob(
    {
      fp16: cache.dtype === 'float16',
      rawFloat32: raw.float32,
      profileId: m.profile_id,
      tokens: cache.tokens,
      startPosition: cache.startPosition,
      layers: cache.layers,
      kvHeads: cache.kvHeads,
      headDim: cache.headDim,
      sink,
      window,
    },
    sections,
  );
}

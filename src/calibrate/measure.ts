// Tested by test/calibrate/measure.test.ts (bootstrap), test/calibrate/calibrate.test.ts and test/acceptance/pinned-bytes.test.ts.
/**
 * Measurements on held-out caches: the real codec's ratio and error (encode, decode), and a
 * fast sizing of candidate plans from precomputed coefficients for the budget search.
 */
import { blobBytes, compressSection, fp16BytesPerToken, type EntropyCoder } from '../codec/blob.js';
import { KvtcCodec } from '../codec/codec.js';
import { heldoutCoefficients, type AllocationTables } from '../fit/fit.js';
import { encodePlanPayload, toStoredComponentMajor } from '../codec/payload.js';
import type { BasisPlan, PlanCodesLayout } from '../codec/types.js';
import type { KvCache, ModelSpec } from '../model/types.js';
import { cacheSet, type CacheSet } from './cache-park.js';
import type { Device } from '../onnx/session.js';
import { mulberry32 } from '../random.js';

/** Relative error ‖x̂−x‖/‖x‖ per layer over tokens [t0, t1), accumulated into sums. */
function accumulateError(a: KvCache, b: KvCache, t0: number, t1: number, num: Float64Array[], den: Float64Array[]): void {
  for (const [k, src, dst] of [
    [0, a.keys, b.keys],
    [1, a.values, b.values],
  ] as const) {
    for (let l = 0; l < a.layers; l++) {
      const x = src[l];
      const y = dst[l];
      let n = 0;
      let d = 0;
      for (let h = 0; h < a.kvHeads; h++) {
        const base = h * a.tokens * a.headDim;
        for (let i = base + t0 * a.headDim; i < base + t1 * a.headDim; i++) {
          const e = y[i] - x[i];
          n += e * e;
          d += x[i] * x[i];
        }
      }
      num[k][l] += n;
      den[k][l] += d;
    }
  }
}

export interface Measurement {
  ratioCompressed: number;
  ratioBlob: number;
  contextTokens: number;
  relKey: number[];
  relValue: number[];
  /**
   * 95% intervals of the mean-over-layers key and value errors: a seeded bootstrap over the
   * measured sequences (sequences, not tokens, are the independent units). Absent without
   * errors, or with fewer than BOOTSTRAP_MIN_SEQUENCES sequences.
   */
  relKeyCi95?: [number, number];
  relValueCi95?: [number, number];
}

export const BOOTSTRAP_RESAMPLES = 1000;
export const BOOTSTRAP_MIN_SEQUENCES = 4;

/** Mean over layers of sqrt(Σnum/Σden), the sums over the chosen sequences. */
function meanRel(num: Float64Array[], den: Float64Array[], pick: ArrayLike<number>, L: number, scratch: Float64Array): number {
  scratch.fill(0);
  for (let i = 0; i < pick.length; i++) {
    const q = pick[i];
    for (let l = 0; l < L; l++) {
      scratch[l] += num[q][l];
      scratch[L + l] += den[q][l];
    }
  }
  let s = 0;
  for (let l = 0; l < L; l++) s += Math.sqrt(scratch[l] / Math.max(scratch[L + l], 1e-30));
  return s / L;
}

/**
 * Percentile bootstrap over sequences of the mean-over-layers relative error. num[q], den[q]
 * are the per-layer sums of sequence q. Seeded (mulberry32(0)): the same caches give the same interval.
 */
export function bootstrapRelError(
  num: Float64Array[],
  den: Float64Array[],
  L: number,
  resamples = BOOTSTRAP_RESAMPLES,
): [number, number] | undefined {
  const n = num.length;
  if (n < BOOTSTRAP_MIN_SEQUENCES) return undefined;
  const rand = mulberry32(0);
  const pick = new Uint32Array(n);
  const scratch = new Float64Array(2 * L);
  const stats = new Float64Array(resamples);
  for (let b = 0; b < resamples; b++) {
    for (let i = 0; i < n; i++) pick[i] = Math.floor(rand() * n);
    stats[b] = meanRel(num, den, pick, L, scratch);
  }
  stats.sort();
  return [stats[Math.floor(0.025 * (resamples - 1))], stats[Math.ceil(0.975 * (resamples - 1))]];
}

/**
 * Encodes (and optionally decodes) every held-out cache with the plans; the ratios count every
 * blob byte. The caches are read one at a time (parked ones from disk: cache-park.ts).
 */
export async function measurePlans(
  spec: ModelSpec,
  plans: BasisPlan[],
  held: KvCache[] | CacheSet,
  s: { sink: number; window: number; entropy: EntropyCoder; device: Device },
  withError: boolean,
): Promise<Measurement> {
  const codec = await KvtcCodec.create(
    {
      layers: spec.layers,
      kvHeads: spec.kvHeads,
      headDim: spec.headDim,
      // values of their own width (MLA latents, format 3): the codec must measure them as the profile will hold them
      ...(spec.valueDim !== undefined ? { valueDim: spec.valueDim } : {}),
      rope: spec.rope,
      profileId: '0000000000000000',
      sink: s.sink,
      window: s.window,
      entropy: s.entropy,
    },
    plans,
    { device: s.device },
  );
  let fp16 = 0;
  let fp16c = 0;
  let blob = 0;
  let comp = 0;
  let tokens = 0;
  // Per sequence (the bootstrap's units): [kind][sequence] per-layer sums.
  const seqNum: Float64Array[][] = [[], []];
  const seqDen: Float64Array[][] = [[], []];
  const caches = cacheSet(held);
  try {
    for (let i = 0; i < caches.meta.length; i++) {
      const cache = await caches.get(i);
      const { blob: b, stats } = await codec.encode(cache);
      fp16 += stats.fp16Bytes;
      fp16c += stats.fp16BytesCompressed;
      blob += stats.blobBytes;
      comp += stats.compressedBytes;
      tokens += cache.tokens;
      if (withError) {
        const { cache: back } = await codec.decode(b);
        const { sink, n } = codec.split(cache.tokens);
        const qn = [new Float64Array(spec.layers), new Float64Array(spec.layers)];
        const qd = [new Float64Array(spec.layers), new Float64Array(spec.layers)];
        accumulateError(cache, back, sink, sink + n, qn, qd);
        for (let k = 0; k < 2; k++) {
          seqNum[k].push(qn[k]);
          seqDen[k].push(qd[k]);
        }
      }
    }
  } finally {
    await codec.release();
  }
  const sum = (parts: Float64Array[]) => parts.reduce((a, x) => a.map((v, l) => v + x[l]), new Float64Array(spec.layers));
  const rel = (k: number) => {
    const num = sum(seqNum[k]);
    const den = sum(seqDen[k]);
    return Array.from(num, (v, l) => Math.sqrt(v / Math.max(den[l], 1e-30)));
  };
  const ci = (k: number) => (withError ? bootstrapRelError(seqNum[k], seqDen[k], spec.layers) : undefined);
  const relKeyCi95 = ci(0);
  const relValueCi95 = ci(1);
  return {
    ratioCompressed: fp16c / comp,
    ratioBlob: fp16 / blob,
    contextTokens: tokens / caches.meta.length,
    relKey: rel(0),
    relValue: rel(1),
    ...(relKeyCi95 ? { relKeyCi95 } : {}),
    ...(relValueCi95 ? { relValueCi95 } : {}),
  };
}

/**
 * ratio_compressed of the held-out caches under `plans`, from the precomputed coefficients:
 * the same payload and DEFLATE as encode, plus header and section-table bytes.
 */
export function blobSizeRatio(
  plans: PlanCodesLayout[],
  tables: AllocationTables[],
  caches: readonly { tokens: number }[],
  spec: ModelSpec,
  sink: number,
  window: number,
  entropy: EntropyCoder,
): number {
  let fp16 = 0;
  let bytes = 0;
  let row = 0;
  const perToken = fp16BytesPerToken(spec);
  for (const c of caches) {
    const n = c.tokens - sink - window;
    // The raw section's table entry counts, its payload does not (as EncodeStats.compressedBytes).
    const sections = [0];
    for (const [i, plan] of plans.entries()) {
      if (plan.rank === 0) continue;
      const C = heldoutCoefficients(tables[i], row, n, plan.rank);
      sections.push(compressSection('plan', i, encodePlanPayload(toStoredComponentMajor(C, n, plan), n, plan), entropy).stored.byteLength);
    }
    bytes += blobBytes(sections);
    fp16 += perToken * n;
    row += c.tokens - sink;
  }
  return fp16 / bytes;
}

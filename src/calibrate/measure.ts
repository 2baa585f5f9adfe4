// Tested by test/calibrate/calibrate.test.ts and test/acceptance/pinned-bytes.test.ts.
/**
 * Measurements on held-out caches: the real codec's ratio and error (encode, decode), and a
 * fast sizing of candidate plans from precomputed coefficients for the budget search.
 */
import { blobBytes, compressSection, fp16BytesPerToken, type EntropyCoder } from '../codec/blob.js';
import { KvtcCodec } from '../codec/codec.js';
import { heldoutCoefficients, type AllocationTables } from '../fit/fit.js';
import { encodePlanPayload, toStoredComponentMajor } from '../codec/payload.js';
import type { BasisPlan } from '../codec/types.js';
import type { KvCache, ModelSpec } from '../model/types.js';
import type { Device } from '../onnx/session.js';

/** Relative error ‖x̂−x‖/‖x‖ per layer over tokens [t0, t1), accumulated into sums. */
function accumulateError(a: KvCache, b: KvCache, t0: number, t1: number, num: Float64Array[], den: Float64Array[]): void {
  for (const [k, src, dst] of [[0, a.keys, b.keys], [1, a.values, b.values]] as const) {
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
}

/** Encodes (and optionally decodes) every held-out cache with the plans; the ratios count every blob byte. */
export async function measurePlans(spec: ModelSpec, plans: BasisPlan[], caches: KvCache[], s: { sink: number; window: number; entropy: EntropyCoder; device: Device }, withError: boolean): Promise<Measurement> {
  const codec = await KvtcCodec.create(
    { layers: spec.layers, kvHeads: spec.kvHeads, headDim: spec.headDim, rope: spec.rope, profileId: '0000000000000000', sink: s.sink, window: s.window, entropy: s.entropy },
    plans,
    { device: s.device },
  );
  let fp16 = 0;
  let fp16c = 0;
  let blob = 0;
  let comp = 0;
  let tokens = 0;
  const num = [new Float64Array(spec.layers), new Float64Array(spec.layers)];
  const den = [new Float64Array(spec.layers), new Float64Array(spec.layers)];
  try {
    for (const cache of caches) {
      const { blob: b, stats } = await codec.encode(cache);
      fp16 += stats.fp16Bytes;
      fp16c += stats.fp16BytesCompressed;
      blob += stats.blobBytes;
      comp += stats.compressedBytes;
      tokens += cache.tokens;
      if (withError) {
        const { cache: back } = await codec.decode(b);
        const { sink, n } = codec.split(cache.tokens);
        accumulateError(cache, back, sink, sink + n, num, den);
      }
    }
  } finally {
    await codec.release();
  }
  const rel = (k: number) => Array.from(num[k], (v, l) => Math.sqrt(v / Math.max(den[k][l], 1e-30)));
  return { ratioCompressed: fp16c / comp, ratioBlob: fp16 / blob, contextTokens: tokens / caches.length, relKey: rel(0), relValue: rel(1) };
}


/**
 * ratio_compressed of the held-out caches under `plans`, from the precomputed coefficients:
 * the same payload and DEFLATE as encode, plus header and section-table bytes.
 */
export function blobSizeRatio(plans: BasisPlan[], tables: AllocationTables[], caches: KvCache[], spec: ModelSpec, sink: number, window: number, entropy: EntropyCoder): number {
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

// Test-only references (issue 14): the host dequantizer of a whole plan payload, the inverse of
// encodePlanPayload (the runtime decodes on the graph, with static groups folded into the basis).
import { splitStored, decodePlanCodes, type PlanCodes } from '../../src/codec/payload.js';
import { staticDecodeTable, type StoredType } from '../../src/codec/quant.js';
import type { BasisPlan, QuantGroup } from '../../src/codec/types.js';

const stored = (plan: Pick<BasisPlan, 'groups'>): QuantGroup[] => plan.groups.filter((g) => g.type !== 'none');
const affine = (g: QuantGroup): boolean => g.mode === 'static' && g.type !== 'fp8' && g.type !== 'none';
const lut = new Float32Array(256);

/** Inverse of quantizeStored: PlanCodes → coefficients [k, n] in storedComponents order. */
export function dequantizeStored(pc: PlanCodes, n: number, plan: BasisPlan): Float32Array {
  const sp = splitStored(plan);
  const out = new Float32Array((sp.affine.length + sp.other.length) * n);
  let ra = 0;
  let rb = 0;
  let row = 0;
  for (const g of stored(plan)) {
    for (let c = g.start; c < g.end; c++, row++) {
      if (!affine(g)) {
        out.set(pc.coeffs.subarray(rb * n, (rb + 1) * n), row * n);
        rb++;
        continue;
      }
      staticDecodeTable(plan.lo[c], plan.hi[c], g.type as StoredType, lut);
      for (let t = 0, s = ra * n, d = row * n; t < n; t++) out[d + t] = lut[pc.codes[s + t]];
      ra++;
    }
  }
  return out;
}

/** Inverse of encodePlanPayload → coeffs [k, n] (storedComponents order). Bit-identical to the token-major reference dequantizer (test/codec/quant-reference.ts). */
export function decodePlanPayload(payload: Uint8Array, n: number, plan: BasisPlan, source = '<blob>'): Float32Array {
  return dequantizeStored(decodePlanCodes(payload, n, plan, source), n, plan);
}

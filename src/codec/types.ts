// Tested by test/codec/payload.test.ts.
/**
 * Shared codec types. A profile holds one BasisPlan per (layer group, kind).
 *
 * Coordinates: a token's feature vector for a plan is the concatenation, over
 * plan.layers in order, of that layer's kvHeads×headDim values (head-major:
 * feature index = (li*kvHeads + h)*headDim + d). Keys are un-rotated (RoPE removed) first.
 */

export type KvKind = 'key' | 'value';

/** Storage type of one component group. 'none' = dropped (0 bits). */
export type QuantType = 'none' | 'int2' | 'int4' | 'int8' | 'fp8';

/**
 * 'dynamic': per-token affine range for the group, min/max stored as fp16 scale+offset (32 bits/token/group).
 * 'static':  per-component range fitted at calibration, stored in the profile (0 bits/token overhead).
 */
export type RangeMode = 'static' | 'dynamic';

export const TYPE_BITS: Record<QuantType, number> = { none: 0, int2: 2, int4: 4, int8: 8, fp8: 8 };
/** Per-token overhead of a dynamic group: fp16 scale + fp16 offset. */
export const DYNAMIC_OVERHEAD_BITS = 32;

export interface QuantGroup {
  /** Components [start, end) in variance order. */
  start: number;
  end: number;
  type: QuantType;
  mode: RangeMode;
}

export interface BasisPlan {
  kind: KvKind;
  /** Layers whose features are concatenated into this basis, in order. */
  layers: number[];
  /** p = layers.length * kvHeads * headDim */
  dim: number;
  /** Stored components r (trailing dropped components are not stored). */
  rank: number;
  /** [p] feature mean, subtracted before projection. */
  mean: Float32Array;
  /** [p, r] row-major; column j is the j-th principal direction (orthonormal columns). */
  basis: Float32Array;
  /** [r] variance of each stored component on calibration data. */
  variances: Float32Array;
  /** Groups in component order; 'none' groups (or gaps, in a profile) are dropped components. */
  groups: QuantGroup[];
  /** [r] static range per component (used by 'static' groups; ignored otherwise). */
  lo: Float32Array;
  hi: Float32Array;
  /** Bit budget per token the allocation was solved for (recorded in the profile). */
  budgetBits?: number;
}

/** What a plan's payload (quantization and the codes' layout, src/codec/payload.ts) reads of it: no basis. */
export type PlanCodesLayout = Pick<BasisPlan, 'kind' | 'layers' | 'rank' | 'groups' | 'lo' | 'hi'>;

export function planBitsPerToken(plan: Pick<BasisPlan, 'groups'>): number {
  let bits = 0;
  for (const g of plan.groups) {
    if (g.type === 'none') continue;
    bits += (g.end - g.start) * TYPE_BITS[g.type] + (g.mode === 'dynamic' ? DYNAMIC_OVERHEAD_BITS : 0);
  }
  return bits;
}

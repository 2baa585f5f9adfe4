// Tested by test/codec/codec.test.ts.
/** What the encode and decode pipelines share from a KvtcCodec (codec.ts builds it once). */
import { valueDimOf, type ShardSpec } from '../model/types.js';
import type { PlanRope } from '../rope/codec-rope.js';
import type { ModelRope } from '../rope/types.js';
import type { BlobLayout, EntropyCoder } from './blob.js';
import type { TransformRunner } from './transform.js';
import type { BasisPlan } from './types.js';

export interface CodecSpec {
  layers: number;
  kvHeads: number;
  /** Width of each key head. */
  headDim: number;
  /** Width of each value head (profile model.value_head_dim); absent: headDim. */
  valueDim?: number;
  /**
   * Informational (the codec indexes the layers and heads of this profile's cache): the model
   * layer of each cache layer (profile model.cache_layers) and the rank's shard (profile shard).
   */
  cacheLayers?: number[];
  shard?: ShardSpec;
  /** RoPE of each layer (index = layer; null: none). */
  rope: ModelRope;
  profileId: string;
  sink: number;
  window: number;
  entropy: EntropyCoder;
  /** The model's context: encode and decode refuse start_position + tokens beyond it (absent: blob.ts DEFAULT_MAX_POSITIONS). */
  maxPositions?: number;
}

export interface CodecParts {
  spec: CodecSpec;
  plans: BasisPlan[];
  transform: TransformRunner;
  /** Per plan: its layers' RoPE segments and distinct descriptions (src/rope/codec-rope.ts planRope). */
  planRopes: PlanRope[];
  /** CPU: RoPE runs on the host, fused into gather/scatter (ORT's Gather/Concat chain cost 10x the matmul). */
  ropeOnHost: boolean;
  /** The graphs run on a worker thread (ThreadedTransform), overlapping the host stages. */
  threaded: boolean;
  /** What a blob of this profile must look like (parseBlob). */
  layout: BlobLayout;
  /** Per plan: the largest ‖x‖ of a compressed token (range.ts); Infinity where unchecked. */
  normBound: number[];
  /** Buffers reused across calls, grown to the largest size seen. */
  scratch: { gather: Float32Array; codes: Uint8Array; norms: Float64Array };
}

/** Raw tokens at each end: all of them when the cache is shorter than sink + window. */
export function splitTokens(spec: Pick<CodecSpec, 'sink' | 'window'>, tokens: number): { sink: number; window: number; n: number } {
  const sink = Math.min(spec.sink, tokens);
  const window = Math.min(spec.window, tokens - sink);
  return { sink, window, n: tokens - sink - window };
}

/** The width of one row of a plan's features: keys headDim, values valueDim (absent: headDim). */
export function planHeadDim(spec: Pick<CodecSpec, 'headDim' | 'valueDim'>, plan: Pick<BasisPlan, 'kind'>): number {
  return plan.kind === 'key' ? spec.headDim : valueDimOf(spec);
}

export const now = () => performance.now() / 1000;

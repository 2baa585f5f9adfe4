/**
 * KVTC encode/decode of a whole cache with a profile. The matrix work — and the quantization of
 * static int groups, which is affine — runs as ONNX graphs (graphs.ts) on the chosen execution
 * provider; bit-packing, the dynamic and fp8 groups and DEFLATE run on the host (payload.ts,
 * blob.ts). The pipelines are encode.ts and decode.ts; this class builds what they share once.
 */
import { KvtcError } from '../errors.js';
import { valueDimOf, type KvCache } from '../model/types.js';
import type { Device } from '../onnx/session.js';
import { planRope } from '../rope/codec-rope.js';
import { DEFAULT_MAX_POSITIONS } from './blob.js';
import { type CodecParts, type CodecSpec, planHeadDim, splitTokens } from './codec-parts.js';
import { decodeBlob, type DecodeStats } from './decode.js';
import { encodeCache, type EncodeStats } from './encode.js';
import { buildDecodeGraph, buildEncodeGraph } from './graphs.js';
import { payloadLength } from './payload.js';
import { planNormBound } from './range.js';
import { InlineTransform, ThreadedTransform, type GraphSource } from './transform.js';
import type { BasisPlan } from './types.js';

export type { CodecSpec } from './codec-parts.js';
export type { DecodeStats } from './decode.js';
export type { EncodeStats } from './encode.js';
export { OUTLIER_FACTOR } from './range.js';

export interface CodecOptions {
  device?: Device;
  /** Intra-op threads per ONNX Runtime session (default 1: dozens of small sessions with
   * spinning thread pools fight over the cores; measured 2.6x slower transform on 2 cores). */
  threads?: number;
  /** Run the graphs on a worker thread, overlapping them with the host stages (uses a second
   * core; worth it for large caches, costs a worker start-up per codec). */
  transformThread?: boolean;
}

export class KvtcCodec {
  private constructor(private readonly parts: CodecParts) {}

  get spec(): CodecSpec {
    return this.parts.spec;
  }

  get plans(): BasisPlan[] {
    return this.parts.plans;
  }

  get threaded(): boolean {
    return this.parts.threaded;
  }

  static async create(spec: CodecSpec, plans: BasisPlan[], opts: CodecOptions = {}): Promise<KvtcCodec> {
    if (spec.rope.length !== spec.layers) {
      throw new KvtcError('PROFILE_INVALID', `the codec has RoPE for ${spec.rope.length} layers but ${spec.layers} layers`, {
        fix: 'Give one RoPE description (or none) per layer.',
      });
    }
    // On the CPU the key graphs are built without their RoPE nodes (the host does it, same bits);
    // on CUDA the graphs keep RoPE so that all of the matrix work stays on the device.
    const ropeOnHost = (opts.device ?? 'cpu') === 'cpu';
    // Each plan's rows are heads of its kind's width: keys headDim, values valueDim.
    const ctx = (p: BasisPlan) => ({ headDim: planHeadDim(spec, p), rope: ropeOnHost ? undefined : spec.rope });
    // Built lazily, one graph before its session (transform.ts): they are as large as the bases.
    const graphs: GraphSource = {
      count: plans.length,
      build: (dir, i) => {
        const p = plans[i];
        if (p.rank === 0) return null;
        return dir === 'encode' ? buildEncodeGraph(p, ctx(p)) : buildDecodeGraph(p, ctx(p));
      },
    };
    const so = { device: opts.device, threads: opts.threads ?? 1 };
    const transform = opts.transformThread ? await ThreadedTransform.create(graphs, so) : await InlineTransform.create(graphs, so);
    return new KvtcCodec({
      spec,
      plans,
      transform,
      planRopes: plans.map((p) => planRope(spec.rope, p.layers)),
      ropeOnHost,
      threaded: opts.transformThread === true,
      layout: {
        profileId: spec.profileId,
        layers: spec.layers,
        kvHeads: spec.kvHeads,
        headDim: spec.headDim,
        ...(spec.valueDim !== undefined ? { valueDim: spec.valueDim } : {}),
        sink: spec.sink,
        window: spec.window,
        planBytes: plans.map((p) => (p.rank > 0 ? (n: number) => payloadLength(p, n) : null)),
        maxPositions: spec.maxPositions ?? DEFAULT_MAX_POSITIONS,
        maxPositionsRecorded: spec.maxPositions !== undefined,
      },
      normBound: plans.map(planNormBound),
      scratch: { gather: new Float32Array(0), codes: new Uint8Array(0), norms: new Float64Array(0) },
    });
  }

  /** Raw tokens at each end: all of them when the cache is shorter than sink + window. */
  split(tokens: number): { sink: number; window: number; n: number } {
    return splitTokens(this.parts.spec, tokens);
  }

  checkCache(cache: KvCache, source = 'the KV cache'): void {
    const s = this.parts.spec;
    const cv = valueDimOf(cache);
    const sv = valueDimOf(s);
    if (cache.layers !== s.layers || cache.kvHeads !== s.kvHeads || cache.headDim !== s.headDim || cv !== sv) {
      const dims = (hd: number, vd: number) => (hd === vd && cv === sv ? `${hd} head dim` : `${hd} key / ${vd} value head dim`);
      throw new KvtcError(
        'PROFILE_MISMATCH',
        `${source} has ${cache.layers} layers × ${cache.kvHeads} KV heads × ${dims(cache.headDim, cv)}, but the profile is for ${s.layers} × ${s.kvHeads} × ${dims(s.headDim, sv)}`,
        {
          fix: 'Use the profile calibrated for the model that produced this cache (`kvtc inspect` shows which model a profile is for).',
        },
      );
    }
  }

  async encode(cache: KvCache, source = 'the KV cache'): Promise<{ blob: Uint8Array; stats: EncodeStats }> {
    this.checkCache(cache, source);
    return encodeCache(this.parts, cache, source);
  }

  /** Decodes a blob of this profile (untrusted: decode.ts). */
  async decode(blob: Uint8Array, source = '<blob>'): Promise<{ cache: KvCache; stats: DecodeStats }> {
    return decodeBlob(this.parts, blob, source);
  }

  async release(): Promise<void> {
    await this.parts.transform.release();
  }
}

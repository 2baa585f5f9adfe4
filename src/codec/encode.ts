// Tested by test/codec/codec.test.ts, test/codec/range.test.ts and test/acceptance/pinned-bytes.test.ts.
/**
 * The encode pipeline: check the values (finite; compressed tokens within the profile's range,
 * range.ts); tokens [0, sink) and [T−window, T) → raw section (raw-section.ts); tokens
 * [sink, T−window) → per plan: gather [G, n, hd] → graph → codes [kA, n] and coeffs [kB, n]
 * (stored components, component-major) → pack (+ quantize the kB) → DEFLATE → plan section.
 */
import { KvtcError } from '../errors.js';
import type { KvCache } from '../model/types.js';
import {
  assembleBlob,
  compressSection,
  DEFAULT_MAX_POSITIONS,
  fp16BytesPerToken,
  MAX_POSITIONS,
  MAX_TOKENS,
  type EncodedSection,
} from './blob.js';
import { type CodecParts, type CodecSpec, now, planHeadDim, splitTokens } from './codec-parts.js';
import { cacheTables, type CacheTables, tableInputNames } from '../rope/codec-rope.js';
import { gatherHeads, hostRope, type PlanHostRope } from './host-kernels.js';
import { encodePlanCodes } from './payload.js';
import { checkPlanTokens, checkUngathered } from './range.js';
import { rawSection } from './raw-section.js';
import type { Feeds, Outputs } from './transform.js';

export interface EncodeStats {
  tokens: number;
  compressedTokens: number;
  /** fp16 bytes of the whole cache / of the compressed tokens only. */
  fp16Bytes: number;
  fp16BytesCompressed: number;
  blobBytes: number;
  /** Blob bytes attributable to the compressed tokens: everything except the raw section payload. */
  compressedBytes: number;
  ratioBlob: number;
  ratioCompressed: number;
  /**
   * Wall time on the calling thread; with transformThread, transform is the time spent waiting for
   * the worker. transform = the ONNX graphs, which also quantize the static int groups;
   * quantize = host bit-packing and the dynamic and fp8 groups.
   */
  seconds: { gather: number; transform: number; quantize: number; entropy: number; total: number };
}

/** Threaded: graph runs queued on the worker beyond the one this thread waits for next. */
const IN_FLIGHT = 2;
const NO_CODES = new Uint8Array(0);
const NO_COEFFS = new Float32Array(0);

/** Refuses token counts and positions a blob cannot hold, and positions beyond the model's context. */
function checkExtent(cache: KvCache, source: string, spec: CodecSpec): void {
  if (!(cache.tokens >= 0 && cache.tokens <= MAX_TOKENS && Number.isInteger(cache.tokens))) {
    throw new KvtcError('KV_INVALID', `${source} has ${cache.tokens} tokens; a kvtc blob holds at most ${MAX_TOKENS} (2^24)`, {
      fix: `Split the cache into pieces of at most ${MAX_TOKENS} tokens (each with its own start position).`,
      context: { source, tokens: cache.tokens, max_tokens: MAX_TOKENS },
    });
  }
  if (!(Number.isInteger(cache.startPosition) && cache.startPosition >= 0 && cache.startPosition + cache.tokens <= MAX_POSITIONS)) {
    throw new KvtcError(
      'KV_INVALID',
      `${source} starts at position ${cache.startPosition} with ${cache.tokens} tokens; positions must be integers in [0, 2^32)`,
      {
        fix: 'Give the cache its real start position (the absolute position of its first token).',
        context: { source, start_position: cache.startPosition, tokens: cache.tokens },
      },
    );
  }
  // Decoders refuse a blob past the model's context (blob.ts parseBlob): never write one.
  const max = spec.maxPositions ?? DEFAULT_MAX_POSITIONS;
  if (cache.startPosition + cache.tokens > max) {
    throw new KvtcError(
      'KV_INVALID',
      `${source} starts at position ${cache.startPosition} with ${cache.tokens} tokens, so its last token is at position ${cache.startPosition + cache.tokens - 1}, but the model has ${max} positions (0–${max - 1}${spec.maxPositions === undefined ? ', the bound for a profile that does not record model.max_positions' : ", the profile's model.max_positions"})`,
      {
        fix:
          spec.maxPositions === undefined
            ? "Give the cache its real start position (the absolute position of its first token); re-calibrating records the model's own bound."
            : 'Give the cache its real start position (the absolute position of its first token): no cache of this model reaches past its context.',
        context: { source, start_position: cache.startPosition, tokens: cache.tokens, max_positions: max },
      },
    );
  }
}

/** Encodes a cache whose shape the caller has checked against the profile. */
export async function encodeCache(c: CodecParts, cache: KvCache, source: string): Promise<{ blob: Uint8Array; stats: EncodeStats }> {
  const t0 = now();
  checkExtent(cache, source, c.spec);
  const { sink, window, n } = splitTokens(c.spec, cache.tokens);
  checkUngathered(c.plans, cache, sink, n, source);
  const raw = rawSection(cache, sink, window, source);
  const sections: EncodedSection[] = [compressSection('raw', 0, raw.data, 'stored')];
  const sec = { gather: 0, transform: 0, quantize: 0, entropy: 0, total: 0 };
  if (n > 0) await encodePlans(c, cache, sink, n, sections, sec, source);
  const blob = assembleBlob(
    {
      fp16: cache.dtype === 'float16',
      rawFloat32: raw.float32,
      profileId: c.spec.profileId,
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
  sec.total = now() - t0;
  const perToken = fp16BytesPerToken(cache);
  const compressedBytes = blob.byteLength - sections[0].stored.byteLength;
  return {
    blob,
    stats: {
      tokens: cache.tokens,
      compressedTokens: n,
      fp16Bytes: perToken * cache.tokens,
      fp16BytesCompressed: perToken * n,
      blobBytes: blob.byteLength,
      compressedBytes,
      ratioBlob: (perToken * cache.tokens) / blob.byteLength,
      ratioCompressed: n > 0 ? (perToken * n) / compressedBytes : Number.NaN,
      seconds: sec,
    },
  };
}

/**
 * One plan section per plan of rank > 0, appended to `sections` in plan order. Gather a basis and
 * submit its projection; threaded, up to IN_FLIGHT projections run on the worker while this thread
 * quantizes and deflates the oldest result and gathers the next basis (into a buffer the worker
 * handed back). Inline (IN_FLIGHT = 0), each result is used at once and one gather buffer is reused.
 */
async function encodePlans(
  c: CodecParts,
  cache: KvCache,
  sink: number,
  n: number,
  sections: EncodedSection[],
  sec: EncodeStats['seconds'],
  source: string,
): Promise<void> {
  // cos/sin of each distinct layer RoPE for tokens [sink, sink + n), shared by the plans using it
  const memo = new Map<string, CacheTables>();
  const seqLen = cache.startPosition + cache.tokens;
  const inFlight = c.threaded ? IN_FLIGHT : 0;
  const pending: { i: number; out: Promise<Outputs> }[] = [];
  const finish = async () => {
    const { i, out: o } = pending.shift()!;
    let t = now();
    const out = await o;
    sec.transform += now() - t;
    t = now();
    const payload = encodePlanCodes(
      { codes: (out.codes as Uint8Array) ?? NO_CODES, coeffs: (out.coeffs as Float32Array) ?? NO_COEFFS },
      n,
      c.plans[i],
      { plan: i, firstToken: sink, source },
    );
    sec.quantize += now() - t;
    t = now();
    sections.push(compressSection('plan', i, payload, c.spec.entropy));
    sec.entropy += now() - t;
  };
  if (c.scratch.norms.length < n) c.scratch.norms = new Float64Array(n);
  const norms = c.scratch.norms;
  try {
    for (let i = 0; i < c.plans.length; i++) {
      const plan = c.plans[i];
      if (plan.rank === 0) continue;
      while (pending.length > inFlight) await finish();
      const t = now();
      const x = gatherBuffer(c, n * plan.dim);
      const hd = planHeadDim(c.spec, plan); // keys headDim, values valueDim
      const pr = c.planRopes[i];
      const tables = plan.kind === 'key' ? cacheTables(pr.ropes, cache.startPosition + sink, n, seqLen, memo) : [];
      let host: PlanHostRope;
      if (c.ropeOnHost && tables.length) {
        const byTable = tables.map((t) => hostRope(t.rope, cache.headDim, t.undo));
        host = plan.layers.map((_, li) => {
          const seg = pr.segments.find((sg) => li >= sg.li0 && li < sg.li1)!;
          return seg.table < 0 ? undefined : byTable[seg.table];
        });
      }
      gatherHeads(plan.kind === 'key' ? cache.keys : cache.values, plan.layers, cache.kvHeads, hd, cache.tokens, sink, n, x, host, norms);
      sec.gather += now() - t;
      checkPlanTokens(plan, i, c.normBound[i], norms, cache, sink, n, source);
      const feeds: Feeds = { x: { data: x, dims: [plan.dim / hd, n, hd] } };
      if (!c.ropeOnHost) {
        tables.forEach((t, j) => {
          const names = tableInputNames(pr, j);
          feeds[names.cos] = { data: t.undo.cos, dims: [n, t.undo.cos.length / n] };
          feeds[names.sin] = { data: t.undo.sin, dims: [n, t.undo.sin.length / n] };
        });
      }
      pending.push({ i, out: c.transform.run('encode', i, feeds) });
    }
    while (pending.length) await finish();
  } catch (e) {
    // A range error mid-way: let the graph runs already submitted finish before reporting it.
    await Promise.allSettled(pending.map((p) => p.out));
    throw e;
  }
}

/** Threaded: a buffer the worker handed back (or a new one); inline: the codec's reused buffer. */
function gatherBuffer(c: CodecParts, size: number): Float32Array {
  if (c.threaded) return c.transform.take?.(size) ?? new Float32Array(size);
  if (c.scratch.gather.length < size) c.scratch.gather = new Float32Array(size);
  return c.scratch.gather.subarray(0, size);
}

// Tested by test/calibrate/calibrate.test.ts and test/acceptance/pinned-bytes.test.ts.
/** The profile manifest a calibration run writes (everything but the parts serializeProfile adds). */
import type { EntropyCoder } from '../codec/blob.js';
import type { ModelDescription } from '../model/load.js';
import { manifestRope } from '../profile/rope.js';
import { PROFILE_FORMAT, PROFILE_FORMAT_VERSION } from '../profile/schema.js';
import type { ManifestDraft } from '../profile/write.js';
import { PRODUCER, VERSION } from '../version.js';
import type { Measurement } from './measure.js';
import { onnxFileOf } from '../profile/compat.js';
import type { DumpModel } from './kv-dump.js';
import { format3ModelFields, shardManifest } from '../profile/format3.js';

/**
 * The manifest's model section (and shard) for a KV dump's model (format 3, docs/profile-format.md
 * §2.4): the fingerprint of the dump's model description (no ONNX graph); value_head_dim, cache,
 * model_layers/cache_layers and shard only where they say something.
 */
export function dumpModelSection(d: DumpModel): Pick<ManifestDraft, 'model' | 'shard'> {
  const spec = d.spec;
  return {
    model: {
      name: d.name,
      architecture: spec.architecture,
      family: spec.family,
      fingerprint: { id: d.fingerprint.id, spec_sha256: d.fingerprint.specSha256, source: 'kv-dump' },
      layers: spec.layers,
      heads: spec.heads,
      kv_heads: spec.kvHeads,
      head_dim: spec.headDim,
      kv_dtype: spec.kvDtype,
      ...format3ModelFields(spec),
      rope: manifestRope(spec.rope),
      max_positions: spec.maxPositions,
    },
    ...(spec.shard ? { shard: shardManifest(spec.shard) } : {}),
  };
}

export interface DraftInputs {
  /** The ONNX model calibrated on; or `dump`, the KV dump's model. */
  model?: ModelDescription;
  dump?: DumpModel;
  ratio: number;
  opts: {
    sink: number;
    window: number;
    grouping: string | number;
    tokens: number;
    heldout: number;
    report: number;
    chunk: number;
    seed: number;
  };
  /** What --grouping asked for ('auto', or the grouping itself). */
  groupingRequested: string;
  /** With 'auto': every candidate at this ratio on the tuning split. */
  candidates: { grouping: string; ratio_compressed: number; rel_error: { key: number; value: number } }[];
  /** Groupings fitted two-level (src/fit/two-level.ts); recorded only when there are any. */
  sketched?: string[];
  granule: number;
  entropy: EntropyCoder;
  sources: { name: string; sha256: string; bytes: number }[];
  split: { fit: number; heldout: number; report: number; seqLen: number };
  /** Tokens of each split when its sequences differ in length (a KV dump's); default: sequences × seqLen. */
  tokens?: { fit: number; heldout: number; report: number };
  /** The report split (what the profile's figures are). */
  m: Measurement;
  /** The same plans on the tuning split. */
  tuning: Measurement;
}

const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;

/** 6 significant digits: manifests stay readable and reproducible. */
function round(x: number): number {
  return Number.isFinite(x) ? Number(x.toPrecision(6)) : x;
}

/** The model section of a profile calibrated on an ONNX model. */
function onnxModelSection(model: ModelDescription): ManifestDraft['model'] {
  const spec = model.spec;
  const fp = model.fingerprint;
  return {
    name: model.name,
    architecture: spec.architecture,
    family: spec.family,
    fingerprint: {
      id: fp.id,
      spec_sha256: fp.specSha256,
      onnx_sha256: fp.onnx.sha256,
    },
    onnx_file: onnxFileOf(model.files),
    layers: spec.layers,
    heads: spec.heads,
    kv_heads: spec.kvHeads,
    head_dim: spec.headDim,
    kv_dtype: spec.kvDtype,
    rope: manifestRope(spec.rope),
    // The bound encode and decode check positions against (outside profile_id: it decides what decodes, never how).
    max_positions: spec.maxPositions,
  };
}

export function manifestDraft({
  model,
  dump,
  ratio,
  opts,
  groupingRequested,
  candidates,
  sketched,
  granule,
  entropy,
  sources,
  split,
  tokens,
  m,
  tuning,
}: DraftInputs): ManifestDraft {
  return {
    format: PROFILE_FORMAT,
    // serializeProfile makes it 3 when a format-3 field is present (a dump's fingerprint always is).
    format_version: PROFILE_FORMAT_VERSION,
    producer: { name: PRODUCER, version: VERSION },
    ...(dump ? dumpModelSection(dump) : { model: onnxModelSection(model!) }),
    settings: {
      ratio_target: ratio,
      sink: opts.sink,
      window: opts.window,
      grouping: String(opts.grouping),
      grouping_requested: groupingRequested,
      tokens: opts.tokens,
      heldout: opts.heldout,
      report: opts.report,
      chunk: opts.chunk,
      seed: opts.seed,
      granule,
      entropy,
    },
    calibration: {
      sources,
      tokens_fit: tokens?.fit ?? split.fit * split.seqLen,
      tokens_heldout: tokens?.heldout ?? split.heldout * split.seqLen,
      tokens_report: tokens?.report ?? split.report * split.seqLen,
      sequences: split.fit + split.heldout + split.report,
      ...(candidates.length
        ? {
            grouping_candidates: candidates.map((c) => ({
              grouping: c.grouping,
              ratio_compressed: round(c.ratio_compressed),
              key_mean: round(c.rel_error.key),
              value_mean: round(c.rel_error.value),
            })),
          }
        : {}),
      ...(sketched?.length ? { sketched_groupings: sketched } : {}),
    },
    measured: {
      split: 'report',
      context_tokens: m.contextTokens,
      ratio_compressed: round(m.ratioCompressed),
      ratio_blob: round(m.ratioBlob),
      rel_error: {
        key: m.relKey.map(round),
        value: m.relValue.map(round),
        key_mean: round(mean(m.relKey)),
        value_mean: round(mean(m.relValue)),
        ...(m.relKeyCi95 ? { key_mean_ci95: m.relKeyCi95.map(round) as [number, number] } : {}),
        ...(m.relValueCi95 ? { value_mean_ci95: m.relValueCi95.map(round) as [number, number] } : {}),
      },
      tuning_rel_error: { key_mean: round(mean(tuning.relKey)), value_mean: round(mean(tuning.relValue)) },
    },
  };
}

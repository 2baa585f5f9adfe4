/**
 * The profile manifest (kvtc-profile.json), format version 2 (version 1 still read: its
 * `model.rope` is one RoPE object for every layer, version 2's a list of per-layer groups). This zod schema is the single
 * source of truth: it validates every manifest kvtc reads, and `schema/kvtc-profile.schema.json`
 * is generated from it (test/profile/schema.test.ts keeps the two identical).
 * docs/profile-format.md is the human-readable specification.
 */
import { z } from 'zod';
import { ENTROPY_CODERS } from '../codec/blob.js';
import { FAMILIES } from '../model/types.js';

export const PROFILE_FORMAT = 'kvtc-profile';
/** The version kvtc writes. */
export const PROFILE_FORMAT_VERSION = 2;
/** The versions kvtc reads. */
export const PROFILE_FORMAT_VERSIONS = [1, 2] as const;
/** The tensor file's layout version (its metadata `format_version`): unchanged by manifest v2. */
export const TENSORS_FORMAT_VERSION = 1;
export const MANIFEST_FILE = 'kvtc-profile.json';
export const TENSORS_FILE = 'kvtc-profile.safetensors';

const hex = (n?: number) => z.string().regex(n ? new RegExp(`^[0-9a-f]{${n}}$`) : /^[0-9a-f]+$/);
const nonneg = z.number().int().nonnegative();
const finite = z.number().finite();
/** Tensor names: no spaces or line breaks, so the profile id's canonical text (docs/profile-format.md §2.1) is unambiguous. */
const tensorName = z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/);

export const QuantGroupSchema = z
  .object({
    start: nonneg.describe('first component (inclusive), in variance order'),
    end: nonneg.describe('last component (exclusive)'),
    type: z.enum(['int2', 'int4', 'int8', 'fp8']).describe('storage type of every component in the group'),
    mode: z.enum(['static', 'dynamic']).describe('static: per-component range from the profile; dynamic: per-token fp16 offset and scale in the blob'),
  })
  .strict();

export const PlanSchema = z
  .object({
    index: nonneg,
    kind: z.enum(['key', 'value']),
    layers: z.array(nonneg).min(1).describe('layers whose features are concatenated, in order'),
    dim: z.number().int().positive().describe('p = len(layers) * kv_heads * head_dim'),
    rank: nonneg.describe('stored components r; trailing dropped components are not stored'),
    budget_bits: nonneg.describe('bit budget per token the allocation was solved for'),
    bits_per_token: nonneg.describe('bits per token the plan actually uses, scales included'),
    groups: z.array(QuantGroupSchema).describe('stored groups, sorted and disjoint, the last ending at rank; components in no group are dropped (coefficient 0)'),
    tensors: z
      .object({
        mean: tensorName,
        basis: tensorName,
        variances: tensorName,
        lo: tensorName,
        hi: tensorName,
      })
      .strict()
      .describe('names of this plan\'s tensors in the safetensors file'),
  })
  .strict();

/** Format v1's `model.rope`: one RoPE for every layer (default, linear or llama3). */
export const RopeSchema = z
  .object({
    theta: z.number().positive(),
    rotary_dim: z.number().int().positive(),
    layout: z.enum(['half', 'interleaved']),
    scaling: z
      .object({
        type: z.enum(['llama3', 'linear']),
        factor: z.number().positive(),
        low_freq_factor: z.number().optional(),
        high_freq_factor: z.number().optional(),
        original_max_position_embeddings: z.number().optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

const positive = z.number().positive();
/** Format v2: a frequency rule with every field it needs (docs/profile-format.md §4). */
export const RopeScalingSchemaV2 = z.discriminatedUnion('type', [
  z.object({ type: z.literal('linear'), factor: positive }).strict(),
  z.object({ type: z.literal('llama3'), factor: positive, low_freq_factor: positive, high_freq_factor: positive, original_max_position_embeddings: positive }).strict(),
  z.object({ type: z.literal('yarn'), factor: positive, original_max_position_embeddings: positive, beta_fast: positive, beta_slow: positive, truncate: z.boolean() }).strict(),
  z
    .object({ type: z.literal('longrope'), short_factor: z.array(positive), long_factor: z.array(positive), original_max_position_embeddings: positive })
    .strict()
    .describe('short_factor up to original_max_position_embeddings cache positions (start_position + tokens), long_factor beyond'),
]);

/** Format v2: the layers sharing one RoPE, or applying none. */
export const RopeGroupSchema = z.union([
  z
    .object({
      layers: z.array(nonneg).min(1).describe('the layers with this RoPE, ascending'),
      theta: positive,
      rotary_dim: z.number().int().positive(),
      layout: z.enum(['half', 'interleaved']),
      scaling: RopeScalingSchemaV2.optional(),
      attention_factor: positive.optional().describe('cos and sin are multiplied by it (transformers attention_scaling); absent: 1'),
    })
    .strict(),
  z.object({ layers: z.array(nonneg).min(1), none: z.literal(true).describe('these layers apply no RoPE: keys are taken as they are') }).strict(),
]);

/** model.rope: v1 one object; v2 the per-layer groups, together naming every layer once. */
export const ModelRopeSchema = z.union([RopeSchema, z.array(RopeGroupSchema).min(1)]);

export const ManifestSchema = z
  .object({
    format: z.literal(PROFILE_FORMAT),
    format_version: z.union([z.literal(1), z.literal(2)]).describe('2 (written); 1 still read'),
    producer: z.object({ name: z.string(), version: z.string() }).strict(),
    profile_id: hex(16).describe('first 16 hex digits of the sha256 of the canonical text of the tensor file sha256 and every manifest field decoding uses (docs/profile-format.md §2.1); blobs name the profile by it'),
    model: z
      .object({
        name: z.string(),
        architecture: z.string(),
        family: z.enum(FAMILIES),
        fingerprint: z
          .object({
            id: hex(16).describe('the model fingerprint: architecture fields, ONNX graph and sampled weights (docs/profile-format.md)'),
            spec_sha256: hex(64).describe('sha256 of the canonical JSON of the architecture fields kvtc reads — not of config.json\'s bytes, so re-saving a config keeps it'),
            onnx_sha256: hex(64),
          })
          .strict(),
        onnx_file: z.string().optional().describe('the graph file calibrated on, relative to the model directory (what --onnx names); informational, not part of profile_id'),
        layers: z.number().int().positive(),
        heads: z.number().int().positive(),
        kv_heads: z.number().int().positive(),
        head_dim: z.number().int().positive(),
        kv_dtype: z.enum(['float32', 'float16']),
        rope: ModelRopeSchema.describe('v1: one RoPE object for every layer; v2: [{ layers, theta, rotary_dim, layout, scaling?, attention_factor? } | { layers, none: true }]'),
      })
      .strict(),
    settings: z
      .object({
        ratio_target: z.number().min(1).max(64),
        sink: nonneg,
        window: nonneg,
        grouping: z.string().describe('"layer", "all", or a number k of consecutive layers per basis (the one the plans use)'),
        grouping_requested: z.string().optional().describe('what --grouping asked for: "auto" (chosen by the tuning-split error among the candidates in calibration.grouping_candidates) or the grouping itself'),
        tokens: z.number().int().positive(),
        heldout: z.number().int().positive().describe('tuning tokens asked for (clip ranges, error tables, bit allocation)'),
        report: z.number().int().positive().optional().describe('report tokens asked for (the measured figures); absent in profiles written before the report split'),
        chunk: z.number().int().positive(),
        seed: z.number().int(),
        granule: z.number().int().positive().describe('dynamic groups start and end on multiples of this'),
        entropy: z.enum(ENTROPY_CODERS).describe('how plan sections were DEFLATEd (decoders just inflate)'),
      })
      .strict(),
    calibration: z
      .object({
        sources: z.array(z.object({ name: z.string(), sha256: hex(64), bytes: nonneg }).strict()),
        tokens_fit: nonneg,
        tokens_heldout: nonneg.describe('tuning tokens: clip ranges (cross-validated), error tables, bit allocation, budget scale, grouping choice'),
        tokens_report: nonneg.optional().describe('report tokens: text neither the fit nor the tuning saw; the measured section comes from it'),
        sequences: nonneg,
        grouping_candidates: z
          .array(z.object({ grouping: z.string(), ratio_compressed: finite, key_mean: finite, value_mean: finite }).strict())
          .optional()
          .describe('with --grouping auto: each candidate at this ratio, measured on the tuning split'),
      })
      .strict(),
    plans: z.array(PlanSchema).min(1),
    measured: z
      .object({
        split: z.literal('report').optional().describe('the split these figures come from: report tokens no fitting or tuning step saw (absent: the tuning split, profiles before the three-way split)'),
        context_tokens: nonneg.describe('tokens of the held-out caches the ratio and error were measured on'),
        ratio_compressed: finite.describe('fp16 bytes of the compressed tokens ÷ their bytes in the blob (sections, scales, headers)'),
        ratio_blob: finite.describe('fp16 bytes of all tokens ÷ bytes of the whole blob, sink and window tokens included'),
        rel_error: z
          .object({
            key: z.array(finite).describe('per layer ‖K̂−K‖/‖K‖ over compressed tokens'),
            value: z.array(finite),
            key_mean: finite,
            value_mean: finite,
            key_mean_ci95: z.tuple([finite, finite]).optional().describe('95% bootstrap interval of key_mean over the measured sequences'),
            value_mean_ci95: z.tuple([finite, finite]).optional(),
          })
          .strict(),
        tuning_rel_error: z.object({ key_mean: finite, value_mean: finite }).strict().optional().describe('the same plans on the tuning split (the allocation was solved there; compare with rel_error)'),
      })
      .strict(),
    tensors: z.object({ file: z.literal(TENSORS_FILE), sha256: hex(64), bytes: nonneg }).strict(),
  })
  .strict();

export type Manifest = z.infer<typeof ManifestSchema>;
export type PlanEntry = z.infer<typeof PlanSchema>;

/** The JSON Schema committed at schema/kvtc-profile.schema.json. */
export function manifestJsonSchema(): Record<string, unknown> {
  return {
    ...(z.toJSONSchema(ManifestSchema) as Record<string, unknown>),
    $id: 'https://github.com/kvtc/kvtc/schema/kvtc-profile.schema.json',
    title: `kvtc profile manifest, format version ${PROFILE_FORMAT_VERSION}`,
  };
}

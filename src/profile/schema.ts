/**
 * The profile manifest (kvtc-profile.json), format version 2, or 3 when the profile uses a field
 * version 2 lacks (value heads of another width, an MLA latent cache, a subset of the model's
 * layers, a shard, a KV-dump fingerprint: docs/profile-format.md §2.4). Version 1 is still read: its
 * `model.rope` is one RoPE object for every layer, version 2's a list of per-layer groups. This zod schema is the single
 * source of truth: it validates every manifest kvtc reads, and `schema/kvtc-profile.schema.json`
 * is generated from it (test/profile/schema.test.ts keeps the two identical).
 * docs/profile-format.md is the human-readable specification.
 */
import { z } from 'zod';
import { ENTROPY_CODERS } from '../codec/blob.js';
import { CACHE_LAYOUTS } from '../model/types.js';

export const PROFILE_FORMAT = 'kvtc-profile';
/** The version kvtc writes for a profile without format-3 fields (write.ts profileFormatVersion). */
export const PROFILE_FORMAT_VERSION = 2;
/** The version kvtc writes when a profile has any format-3 field (FORMAT3_FIELDS). */
export const PROFILE_FORMAT_VERSION_3 = 3;
/** The versions kvtc reads. */
export const PROFILE_FORMAT_VERSIONS = [1, 2, 3] as const;
/** The tensor file's layout version (its metadata `format_version`): unchanged by manifest v2. */
export const TENSORS_FORMAT_VERSION = 1;
export const MANIFEST_FILE = 'kvtc-profile.json';
export const TENSORS_FILE = 'kvtc-profile.safetensors';

const hex = (n?: number) => z.string().regex(n ? new RegExp(`^[0-9a-f]{${n}}$`) : /^[0-9a-f]+$/);
const nonneg = z.number().int().nonnegative();
/** A count that cannot be 0 (zod's .int() also keeps it a safe integer, below 2^53). */
const count = z.number().int().min(1);
/** A free-form label (names, versions): not empty, and bounded so no reader has to hold a huge one. */
const label = z.string().min(1).max(1024);

/**
 * Bounds of the informational figures (docs/profile-format.md §2.3): decoding never reads them,
 * but a reader must not show a user impossible values, so the schema refuses what kvtc cannot
 * produce.
 */
export const FIGURE_LIMITS = {
  /**
   * ‖K̂ − K‖ / ‖K‖. Dropping every component reconstructs the mean, whose error ‖K − μ‖/‖K‖ is at
   * most 1 on the data μ was fitted on (a variance never exceeds the second moment) and about 1
   * on other text; the allocation never does worse than dropping on the tuning split, so kvtc's
   * figures sit at or below ~1 (0.08 keys, 0.41 values for the bundled profile at 20x). One layer
   * of a basis shared by several, or the report split, can exceed 1 (quantization noise spread
   * into a layer whose cache is small), so the bound leaves two orders of magnitude of head-room:
   * an error a hundred times the signal is no codec's output.
   */
  maxRelError: 100,
  /**
   * Compression ratios: the largest target (settings.ratio_target ≤ 64) times DEFLATE's largest
   * expansion (1032:1, blob.ts DEFLATE_MAX_EXPANSION). An allocation solved for 16·p/64 bits per
   * token cannot be entropy-coded smaller than that.
   */
  maxRatio: 64 * 1032,
  /** model.max_positions: every position fits the blob header's u32. */
  maxPositions: 2 ** 32,
} as const;

/** A relative error figure: finite, in [0, FIGURE_LIMITS.maxRelError]. */
const relError = z.number().min(0).max(FIGURE_LIMITS.maxRelError);
/** A compression ratio figure: finite, in (0, FIGURE_LIMITS.maxRatio]. */
const ratio = z.number().positive().max(FIGURE_LIMITS.maxRatio);
/** settings.grouping: "layer", "all", or k consecutive layers per basis (k ≤ 65535, the most layers a blob holds). */
const grouping = z.string().regex(/^(layer|all|[1-9][0-9]{0,4})$/);
/** Tensor names: no spaces or line breaks, so the profile id's canonical text (docs/profile-format.md §2.1) is unambiguous. */
const tensorName = z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/);
/**
 * model.family: a transformers model_type. Format 1–2 hold one of kvtc's FAMILIES (checks.ts
 * checkFormat); format 3 any such label (a profile calibrated from a KV dump of any model).
 */
export const FAMILY_LABEL = /^[a-z0-9_]{1,64}$/;

export const QuantGroupSchema = z
  .object({
    start: nonneg.describe('first component (inclusive), in variance order'),
    end: nonneg.describe('last component (exclusive)'),
    type: z.enum(['int2', 'int4', 'int8', 'fp8']).describe('storage type of every component in the group'),
    mode: z
      .enum(['static', 'dynamic'])
      .describe('static: per-component range from the profile; dynamic: per-token fp16 offset and scale in the blob'),
  })
  .strict();

export const PlanSchema = z
  .object({
    index: nonneg,
    kind: z.enum(['key', 'value']),
    layers: z.array(nonneg).min(1).describe('layers whose features are concatenated, in order'),
    dim: z
      .number()
      .int()
      .positive()
      .describe('p = len(layers) * kv_heads * head_dim (key plans) or len(layers) * kv_heads * value_head_dim (value plans)'),
    rank: nonneg.describe('stored components r; trailing dropped components are not stored'),
    budget_bits: nonneg.describe('bit budget per token the allocation was solved for'),
    bits_per_token: nonneg.describe('bits per token the plan actually uses, scales included'),
    groups: z
      .array(QuantGroupSchema)
      .describe('stored groups, sorted and disjoint, the last ending at rank; components in no group are dropped (coefficient 0)'),
    tensors: z
      .object({
        mean: tensorName,
        basis: tensorName,
        variances: tensorName,
        lo: tensorName,
        hi: tensorName,
      })
      .strict()
      .describe("names of this plan's tensors in the safetensors file"),
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
  z
    .object({
      type: z.literal('llama3'),
      factor: positive,
      low_freq_factor: positive,
      high_freq_factor: positive,
      original_max_position_embeddings: positive,
    })
    .strict(),
  z
    .object({
      type: z.literal('yarn'),
      factor: positive,
      original_max_position_embeddings: positive,
      beta_fast: positive,
      beta_slow: positive,
      truncate: z.boolean(),
    })
    .strict(),
  z
    .object({
      type: z.literal('longrope'),
      short_factor: z.array(positive),
      long_factor: z.array(positive),
      original_max_position_embeddings: positive,
    })
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
  z
    .object({ layers: z.array(nonneg).min(1), none: z.literal(true).describe('these layers apply no RoPE: keys are taken as they are') })
    .strict(),
]);

/** model.rope: v1 one object; v2 the per-layer groups, together naming every layer once. */
export const ModelRopeSchema = z.union([RopeSchema, z.array(RopeGroupSchema).min(1)]);

export const ManifestSchema = z
  .object({
    format: z.literal(PROFILE_FORMAT),
    format_version: z
      .union([z.literal(1), z.literal(2), z.literal(3)])
      .describe('2 (written), 3 (written exactly when a format-3 field is present); 1 still read'),
    producer: z.object({ name: label, version: label }).strict(),
    profile_id: hex(16).describe(
      'first 16 hex digits of the sha256 of the canonical text of the tensor file sha256 and every manifest field decoding uses (docs/profile-format.md §2.1); blobs name the profile by it',
    ),
    model: z
      .object({
        name: label,
        architecture: label,
        family: z
          .string()
          .regex(FAMILY_LABEL)
          .describe("transformers model_type; format 1-2: one of kvtc's families (llama, qwen2, …), format 3: any [a-z0-9_]{1,64}"),
        fingerprint: z
          .object({
            id: hex(16).describe(
              'the model fingerprint: architecture fields, ONNX graph and sampled weights (docs/profile-format.md); source kv-dump: first 16 hex of sha256("kv-dump:" + spec_sha256 + "\\n")',
            ),
            spec_sha256: hex(64).describe(
              "sha256 of the canonical JSON of the architecture fields kvtc reads — not of config.json's bytes, so re-saving a config keeps it; source kv-dump: of the dump manifest's model object without name",
            ),
            onnx_sha256: hex(64).optional().describe('the ONNX graph; absent exactly when source is kv-dump (format 3)'),
            source: z
              .literal('kv-dump')
              .optional()
              .describe(
                'format 3: the profile was calibrated from a KV dump (docs/kv-dumps.md), not from an ONNX model; absent: an ONNX model',
              ),
          })
          .strict(),
        onnx_file: z
          .string()
          .min(1)
          .max(4096)
          .optional()
          .describe(
            'the graph file calibrated on, relative to the model directory (what --onnx names); informational, not part of profile_id',
          ),
        layers: z.number().int().positive(),
        heads: z.number().int().positive().max(0xffff).describe('query heads; a multiple of kv_heads'),
        kv_heads: z.number().int().positive(),
        head_dim: z.number().int().positive().describe('width of each key head'),
        kv_dtype: z.enum(['float32', 'float16']),
        value_head_dim: z.number().int().positive().optional().describe('format 3: width of each value head; absent: head_dim'),
        cache: z
          .enum(CACHE_LAYOUTS)
          .optional()
          .describe(
            'format 3: gqa (per-head keys and values) or mla-latent (kv_heads 1, key = the RoPE key k_rot, value = the latent c_kv); absent: gqa',
          ),
        model_layers: z
          .number()
          .int()
          .positive()
          .optional()
          .describe("format 3, with cache_layers: the model's decoder layers, all of them"),
        cache_layers: z
          .array(nonneg)
          .min(1)
          .optional()
          .describe(
            'format 3, with model_layers: the model layer of each profile layer, strictly increasing, one per profile layer; absent: identity',
          ),
        rope: ModelRopeSchema.describe(
          'v1: one RoPE object for every layer; v2: [{ layers, theta, rotary_dim, layout, scaling?, attention_factor? } | { layers, none: true }]',
        ),
        max_positions: z
          .number()
          .int()
          .positive()
          .max(FIGURE_LIMITS.maxPositions)
          .optional()
          .describe(
            "the model's context (max_position_embeddings): encode and decode refuse a cache whose start_position + tokens exceeds it; absent (profiles before it was recorded): 2^24. Not part of profile_id: it bounds what decodes, never how",
          ),
      })
      .strict(),
    shard: z
      .object({
        tp_rank: nonneg,
        tp_size: count,
        pp_rank: nonneg,
        pp_size: count,
        kv_heads: z
          .array(nonneg)
          .min(1)
          .describe("the model's KV head index of each profile head, in cache order (length = model.kv_heads)"),
      })
      .strict()
      .optional()
      .describe("format 3: this profile is one tensor/pipeline-parallel rank's share of the model's cache"),
    settings: z
      .object({
        ratio_target: z.number().min(1).max(64),
        sink: nonneg,
        window: nonneg,
        grouping: grouping.describe('"layer", "all", or a number k of consecutive layers per basis (the one the plans use)'),
        grouping_requested: z
          .union([z.literal('auto'), grouping])
          .optional()
          .describe(
            'what --grouping asked for: "auto" (chosen by the tuning-split error among the candidates in calibration.grouping_candidates) or the grouping itself',
          ),
        tokens: z.number().int().positive(),
        heldout: z.number().int().positive().describe('tuning tokens asked for (clip ranges, error tables, bit allocation)'),
        report: z
          .number()
          .int()
          .positive()
          .optional()
          .describe('report tokens asked for (the measured figures); absent in profiles written before the report split'),
        chunk: z.number().int().positive(),
        seed: z.number().int(),
        granule: z.number().int().positive().describe('dynamic groups start and end on multiples of this'),
        entropy: z.enum(ENTROPY_CODERS).describe('how plan sections were DEFLATEd (decoders just inflate)'),
      })
      .strict(),
    calibration: z
      .object({
        sources: z
          .array(
            z.object({ name: label, sha256: hex(64), bytes: count.describe('an empty file gives no text: calibrate refuses it') }).strict(),
          )
          .min(1),
        tokens_fit: count,
        tokens_heldout: count.describe(
          'tuning tokens: clip ranges (cross-validated), error tables, bit allocation, budget scale, grouping choice',
        ),
        tokens_report: count
          .optional()
          .describe('report tokens: text neither the fit nor the tuning saw; the measured section comes from it'),
        sequences: count,
        grouping_candidates: z
          .array(z.object({ grouping, ratio_compressed: ratio, key_mean: relError, value_mean: relError }).strict())
          .min(1)
          .optional()
          .describe('with --grouping auto: each candidate at this ratio, measured on the tuning split'),
        sketched_groupings: z
          .array(grouping)
          .min(1)
          .optional()
          .describe(
            'groupings fitted two-level instead of from a p×p covariance (in the span of the largest per-layer principal components; in profiles from earlier kvtc builds, from a streaming Nyström sketch): their bases hold the top components only',
          ),
      })
      .strict(),
    plans: z.array(PlanSchema).min(1),
    measured: z
      .object({
        split: z
          .literal('report')
          .optional()
          .describe(
            'the split these figures come from: report tokens no fitting or tuning step saw (absent: the tuning split, profiles before the three-way split)',
          ),
        context_tokens: count.describe('tokens of the held-out caches the ratio and error were measured on'),
        ratio_compressed: ratio.describe('fp16 bytes of the compressed tokens ÷ their bytes in the blob (sections, scales, headers)'),
        ratio_blob: ratio.describe('fp16 bytes of all tokens ÷ bytes of the whole blob, sink and window tokens included'),
        rel_error: z
          .object({
            key: z.array(relError).min(1).describe('per layer ‖K̂−K‖/‖K‖ over compressed tokens (one per model layer)'),
            value: z.array(relError).min(1),
            key_mean: relError,
            value_mean: relError,
            key_mean_ci95: z
              .tuple([relError, relError])
              .optional()
              .describe('95% bootstrap interval of key_mean over the measured sequences'),
            value_mean_ci95: z.tuple([relError, relError]).optional(),
          })
          .strict(),
        tuning_rel_error: z
          .object({ key_mean: relError, value_mean: relError })
          .strict()
          .optional()
          .describe('the same plans on the tuning split (the allocation was solved there; compare with rel_error)'),
      })
      .strict(),
    tensors: z
      .object({
        file: z.literal(TENSORS_FILE),
        sha256: hex(64),
        bytes: z.number().int().min(8).describe('a safetensors file starts with its 8-byte header length'),
      })
      .strict(),
  })
  .strict();

export type Manifest = z.infer<typeof ManifestSchema>;

/** The manifest fields whose presence makes a profile format 3 (docs/profile-format.md §2.4). */
export const FORMAT3_FIELDS = [
  'model.value_head_dim',
  'model.cache',
  'model.model_layers',
  'model.cache_layers',
  'shard',
  'model.fingerprint.source',
] as const;

/** The format-3 fields `m` has (empty: it can be written as format 2). */
export function format3FieldsOf(m: { model: Partial<Manifest['model']>; shard?: unknown }): string[] {
  const md = m.model;
  const has: Record<(typeof FORMAT3_FIELDS)[number], boolean> = {
    'model.value_head_dim': md.value_head_dim !== undefined,
    'model.cache': md.cache !== undefined,
    'model.model_layers': md.model_layers !== undefined,
    'model.cache_layers': md.cache_layers !== undefined,
    shard: m.shard !== undefined,
    'model.fingerprint.source': md.fingerprint?.source !== undefined,
  };
  return FORMAT3_FIELDS.filter((f) => has[f]);
}
export type PlanEntry = z.infer<typeof PlanSchema>;

/** The JSON Schema committed at schema/kvtc-profile.schema.json. */
export function manifestJsonSchema(): Record<string, unknown> {
  return {
    ...(z.toJSONSchema(ManifestSchema) as Record<string, unknown>),
    $id: 'https://github.com/kvtc/kvtc/schema/kvtc-profile.schema.json',
    title: `kvtc profile manifest, format versions ${PROFILE_FORMAT_VERSION} and ${PROFILE_FORMAT_VERSION_3}`,
  };
}

/** The five tensors each plan names in the tensor file, in the order the profile id lists them. */
export const TENSOR_ROLES = ['mean', 'basis', 'variances', 'lo', 'hi'] as const;
export type TensorRole = (typeof TENSOR_ROLES)[number];

/** The tensor names kvtc writes for plan `i` (a reader takes whatever names the manifest gives). */
export function planTensorNames(i: number): Record<TensorRole, string> {
  return { mean: `plan.${i}.mean`, basis: `plan.${i}.basis`, variances: `plan.${i}.variances`, lo: `plan.${i}.lo`, hi: `plan.${i}.hi` };
}

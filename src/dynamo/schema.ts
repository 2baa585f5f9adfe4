// Tested by test/dynamo/calibrate-export.test.ts.
/**
 * File formats of src/dynamo, validated at read time (both are untrusted input: every number is
 * bounded before anything is allocated from it).
 *
 *  - The dynamo profile (`kvtc calibrate --target dynamo`): a directory with kvtc-dynamo.json
 *    (DynamoManifestSchema) and kvtc-dynamo.safetensors. It is not a kvtc profile: kvtc's own
 *    codec cannot run it and `kvtc encode` / `validate` refuse it by its file name and format.
 *  - The Dynamo export (`kvtc export --format dynamo`): dynamo-kvtc.json (DynamoExportSchema)
 *    with the kernels' own field names, dynamo-kvtc.safetensors (float32 mean [features] and
 *    projection [features, pca_components] per basis, row-major) and README.md.
 */
import { z } from 'zod';
import { BLOCK_LAYOUTS } from './blocks.js';
import { FP8_PATHS, QUANT_TYPES } from './kernels.js';

export const DYNAMO_PROFILE_FORMAT = 'kvtc-dynamo-profile';
export const DYNAMO_PROFILE_VERSION = 1;
export const DYNAMO_MANIFEST_FILE = 'kvtc-dynamo.json';
export const DYNAMO_TENSORS_FILE = 'kvtc-dynamo.safetensors';

export const DYNAMO_EXPORT_FORMAT = 'kvtc-dynamo-export';
export const DYNAMO_EXPORT_VERSION = 1;
export const EXPORT_CONFIG_FILE = 'dynamo-kvtc.json';
export const EXPORT_TENSORS_FILE = 'dynamo-kvtc.safetensors';
export const EXPORT_README_FILE = 'README.md';

/** Bounds: generous for real models, small enough that nothing absurd is ever allocated. */
export const LIMITS = {
  layers: 1024,
  kvHeads: 1024,
  headDim: 1024,
  blockTokens: 1024,
  /** features = kv_heads · head_dim · tokens_per_block per kernel row. */
  features: 65536,
  /** Total bytes of the tensors file. */
  tensorBytes: 16 * 2 ** 30,
  /** Bytes of a manifest / export JSON file. */
  jsonBytes: 64 * 2 ** 20,
  string: 4096,
} as const;

const str = z.string().max(LIMITS.string);
const hex = (n: number) => z.string().regex(new RegExp(`^[0-9a-f]{${n}}$`));
const int = (min: number, max: number) => z.number().int().min(min).max(max);
const finite = z.number().finite();

/** KvtcTypeRange with the kernels' field names (kvtc_kernels.rs). */
export const RangeSchema = z
  .object({
    start_idx: int(0, LIMITS.features),
    end_idx: int(1, LIMITS.features),
    quant_type: z.enum(QUANT_TYPES as unknown as ['Fp8', 'IntX']).describe('KvtcQuantType: Fp8 (= 0) or IntX (= 1)'),
    int_bits: z.union([z.literal(0), z.literal(1), z.literal(2), z.literal(4), z.literal(8)]).describe('0 for Fp8; 1, 2, 4 or 8 for IntX'),
  })
  .strict();

const KindSchema = z.enum(['key', 'value']);

const BlockSchema = z
  .object({
    tokens_per_block: int(1, LIMITS.blockTokens),
    layout: z
      .enum(BLOCK_LAYOUTS as unknown as ['NHD', 'HND'])
      .describe('element order inside a block: NHD = [tokens, heads, head_dim], HND = [heads, tokens, head_dim]'),
    features: int(1, LIMITS.features).describe('kv_heads · head_dim · tokens_per_block'),
    fp8_path: z
      .enum(FP8_PATHS as unknown as ['sm89', 'sm80'])
      .describe("FP8 cast the allocation was measured with: sm89 = __nv_cvt_float_to_fp8 (SM89+), sm80 = the kernels' software fallback"),
  })
  .strict();

const ModelSchema = z
  .object({
    name: str,
    architecture: str,
    fingerprint: str,
    layers: int(1, LIMITS.layers),
    kv_heads: int(1, LIMITS.kvHeads),
    head_dim: int(1, LIMITS.headDim),
    kv_dtype: z.enum(['float32', 'float16']),
  })
  .strict();

const RelErrorSchema = z
  .object({
    key: z.array(finite).max(LIMITS.layers),
    value: z.array(finite).max(LIMITS.layers),
    key_mean: finite,
    value_mean: finite,
  })
  .strict();

const TensorsRefSchema = z.object({ file: str, sha256: hex(64), bytes: int(8, LIMITS.tensorBytes) }).strict();

export const BasisEntrySchema = z
  .object({
    index: int(0, 2 * LIMITS.layers),
    kind: KindSchema,
    layer: int(0, LIMITS.layers - 1),
    features: int(1, LIMITS.features),
    pca_components: int(1, LIMITS.features),
    budget_bytes: int(0, 4 * LIMITS.features),
    bytes_per_block: int(1, 4 * LIMITS.features),
    ranges: z.array(RangeSchema).min(1).max(LIMITS.features),
    tensors: z.object({ mean: str, projection: str, variances: str }).strict(),
  })
  .strict();

export const DynamoManifestSchema = z
  .object({
    format: z.literal(DYNAMO_PROFILE_FORMAT),
    format_version: z.literal(DYNAMO_PROFILE_VERSION),
    producer: z.object({ name: str, version: str }).strict(),
    profile_id: hex(16).describe('first 16 hex digits of the sha256 of the tensors file'),
    model: ModelSchema,
    block: BlockSchema,
    settings: z
      .object({
        ratio_target: z.number().min(1).max(64),
        tokens: int(1, 2 ** 40),
        heldout: int(1, 2 ** 40),
        chunk: int(1, 2 ** 20),
        seed: int(0, 2 ** 40),
        granule: int(1, LIMITS.features),
        int_bits: z
          .array(z.union([z.literal(1), z.literal(2), z.literal(4), z.literal(8)]))
          .min(1)
          .max(4),
      })
      .strict(),
    calibration: z
      .object({
        sources: z.array(z.object({ name: str, sha256: hex(64), bytes: int(0, 2 ** 50) }).strict()).max(100000),
        blocks_fit: int(0, 2 ** 40),
        blocks_heldout: int(0, 2 ** 40),
        sequences: int(0, 2 ** 40),
        seq_len: int(1, 2 ** 24),
      })
      .strict(),
    measured: z
      .object({
        blocks_per_call: int(0, 2 ** 40),
        bytes_per_block: int(0, 2 ** 40).describe('Σ over bases: one block of every layer, K and V'),
        ratio_rows: finite.describe('fp16 bytes of the blocks / their codes and per-row min/max (headers left out)'),
        ratio_calls: finite.describe('the same with the 40-byte range headers of one kernel call per basis per held-out sequence'),
        rel_error: RelErrorSchema,
      })
      .strict(),
    bases: z
      .array(BasisEntrySchema)
      .min(2)
      .max(2 * LIMITS.layers),
    tensors: TensorsRefSchema,
  })
  .strict();

export type DynamoManifest = z.infer<typeof DynamoManifestSchema>;
export type DynamoManifestDraft = Omit<DynamoManifest, 'profile_id' | 'tensors' | 'bases'>;

export const ExportConfigSchema = z
  .object({
    layer: int(0, LIMITS.layers - 1),
    kind: KindSchema,
    features: int(1, LIMITS.features),
    pca_components: int(1, LIMITS.features),
    mean: str.describe('tensor name: F32 [features]'),
    projection: str.describe('tensor name: F32 [features, pca_components], row-major'),
    ranges: z.array(RangeSchema).min(1).max(LIMITS.features),
    bytes_per_block: int(1, 4 * LIMITS.features),
  })
  .strict();

export const DynamoExportSchema = z
  .object({
    format: z.literal(DYNAMO_EXPORT_FORMAT),
    format_version: z.literal(DYNAMO_EXPORT_VERSION),
    producer: z.object({ name: str, version: str }).strict(),
    profile_id: hex(16),
    kernels: z
      .object({
        repository: str,
        folder: str,
        api: str,
        fp8_path: z.enum(FP8_PATHS as unknown as ['sm89', 'sm80']),
      })
      .strict(),
    model: ModelSchema,
    tokens_per_block: int(1, LIMITS.blockTokens),
    block_layout: z.enum(BLOCK_LAYOUTS as unknown as ['NHD', 'HND']),
    num_kv_heads: int(1, LIMITS.kvHeads),
    head_dim: int(1, LIMITS.headDim),
    features: int(1, LIMITS.features),
    tensors: TensorsRefSchema,
    configs: z
      .array(ExportConfigSchema)
      .min(2)
      .max(2 * LIMITS.layers),
    measured: z
      .object({
        ratio_rows: finite,
        ratio_calls: finite,
        blocks_per_call: int(0, 2 ** 40),
        rel_error: RelErrorSchema,
      })
      .strict(),
  })
  .strict();

export type DynamoExport = z.infer<typeof DynamoExportSchema>;
